/* json.c - the bridge to lua-cjson (cjson.safe), obtained once at load.
 *
 * Caveats:
 *  - lua-cjson has no C API: its encode/decode functions are fetched once in
 *    luaopen_kie_core from a private cjson.safe instance (cjson.safe.new()), so a
 *    user's cjson settings never change ours, and kept in the registry under the
 *    addresses of statics. No global is read after load.
 *  - lua-cjson 2.1.0 (Debian) encodes an empty table as {}. Every empty container
 *    in this API is an array (image_urls = {}), so an empty table is sent as []
 *    unless its metatable has __jsontype = "object". cjson's output is used as is
 *    when it holds no "{}"; else the tables are walked and, if one is empty, the
 *    request is encoded again with the rewrite (a second encode, rare).
 *  - JSON null decodes to nil: cjson.null values are removed from decoded tables
 *    (which leaves holes in arrays that held null). The walk only runs when the
 *    text holds the bytes "null" somewhere, i.e. rarely.
 *  - Depth is bounded at KIE_JSON_DEPTH both ways (cjson's own limit). A table that
 *    contains itself is refused at once (the walk keeps the tables on its path):
 *    walking a cycle down to that depth would take 2^depth steps.
 *  - No Lua code runs here but cjson's: __jsontype is read raw (as cjson reads its
 *    own markers). An allocation may still run a finalizer (see client.c's guard).
 *
 * C functions on the Lua stack (stack effect):
 *  kie_json_init(L): cjson.safe's functions into the registry  [-0, +0]
 *  kie_json_encode(L, idx) -> 1 and the JSON | 0 and a message  [-0, +1]
 *  kie_json_decode(L, s, n) -> 1 and the value | 0 and a message [-0, +1]
 */
#include <string.h>
#include <stdio.h>
#include <time.h>
#include "kie.h"

#define KIE_JSON_DEPTH 64

static const char key_encode = 'e';
static const char key_decode = 'd';
static const char key_null = 'n';
static const char key_sentinel = 's';

/* Calls cfg[name](cfg, arg) ignoring failures: [-0, +0]; cfg at idx. */
static void configure(lua_State *L, int idx, const char *name, int arg, int is_bool) {
  lua_getfield(L, idx, name);
  if (!lua_isfunction(L, -1)) { lua_pop(L, 1); return; }
  if (is_bool) lua_pushboolean(L, arg); else lua_pushinteger(L, arg);
  lua_pcall(L, 1, 0, 0) == 0 ? (void)0 : lua_pop(L, 1);
}

void kie_json_init(lua_State *L) {
  int inst;
  char sentinel[64];
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson.safe");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    luaL_error(L, "kie.core needs lua-cjson (module cjson.safe): %s", lua_tostring(L, -1));
  }
  lua_getfield(L, -1, "new");
  if (lua_isfunction(L, -1)) {
    lua_call(L, 0, 1);
    lua_remove(L, -2);
  } else {
    lua_pop(L, 1);
  }
  inst = lua_gettop(L);
  configure(L, inst, "decode_max_depth", KIE_JSON_DEPTH, 0);
  configure(L, inst, "encode_max_depth", KIE_JSON_DEPTH, 0);
  configure(L, inst, "decode_invalid_numbers", 0, 1);
  configure(L, inst, "encode_invalid_numbers", 0, 1);
  lua_getfield(L, inst, "encode");
  lua_getfield(L, inst, "decode");
  lua_getfield(L, inst, "null");
  if (!lua_isfunction(L, -3) || !lua_isfunction(L, -2)) {
    luaL_error(L, "kie.core: cjson.safe has no encode/decode");
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_null);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_decode);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_encode);
  lua_pop(L, 1);
  /* an unguessable marker for empty arrays: \1 forces cjson to escape it as \u0001 */
  snprintf(sentinel, sizeof(sentinel), "\001kie-empty-array-%lx-%lx\001",
           (unsigned long)time(NULL) ^ (unsigned long)clock(), (unsigned long)(size_t)L);
  lua_pushstring(L, sentinel);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_sentinel);
}

/* True if the table at idx is marked __jsontype = "object"; read raw, so no Lua
 * code (an __index on the metatable's metatable) runs: [-0, +0]. */
static int marked_object(lua_State *L, int idx) {
  int yes = 0;
  if (lua_getmetatable(L, idx)) {
    lua_pushliteral(L, "__jsontype");
    lua_rawget(L, -2);
    yes = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "object") == 0;
    lua_pop(L, 2);
  }
  return yes;
}

/* Counts empty, unmarked tables inside the value at idx; -1 if a table contains
 * itself. path (a table at path_idx) holds the tables on the way down, so a cycle
 * is refused at once instead of being walked 2^depth times: [-0, +0]. */
static int count_empty(lua_State *L, int idx, int depth, int path_idx) {
  int n = 0, any = 0;
  if (lua_type(L, idx) != LUA_TTABLE || depth > KIE_JSON_DEPTH) return 0;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, "json nesting");
  lua_pushvalue(L, idx);
  lua_rawget(L, path_idx);
  any = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (any) return -1;
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, path_idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int k = count_empty(L, -1, depth + 1, path_idx);
    any = 1;
    if (k < 0) {
      lua_pop(L, 2);
      return -1;
    }
    n += k;
    lua_pop(L, 1);
  }
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, path_idx);
  if (!any && !marked_object(L, idx)) n++;
  return n;
}

/* Pushes a copy of the value at idx with empty tables replaced by the sentinel: [-0, +1]. */
static void copy_marked(lua_State *L, int idx, int depth) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE || depth > KIE_JSON_DEPTH) {
    lua_pushvalue(L, idx);
    return;
  }
  luaL_checkstack(L, 4, "json nesting");
  lua_pushnil(L);
  if (!lua_next(L, idx)) {
    if (marked_object(L, idx)) lua_pushvalue(L, idx);
    else lua_rawgetp(L, LUA_REGISTRYINDEX, &key_sentinel);
    return;
  }
  lua_pop(L, 2);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    copy_marked(L, -1, depth + 1);
    lua_remove(L, -2);
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
}

/* Replaces every quoted, escaped sentinel in the string on top by []: [-1, +1]. */
static void unmark(lua_State *L) {
  size_t len, slen;
  const char *s = lua_tolstring(L, -1, &len);
  const char *sent, *p;
  char needle[96];
  luaL_Buffer b;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_sentinel);
  sent = lua_tolstring(L, -1, &slen);
  /* cjson writes \001 as \u0001 */
  snprintf(needle, sizeof(needle), "\"\\u0001%.*s\\u0001\"", (int)(slen - 2), sent + 1);
  lua_pop(L, 1);
  slen = strlen(needle);
  luaL_buffinit(L, &b);
  while ((p = strstr(s, needle)) != NULL) {
    luaL_addlstring(&b, s, (size_t)(p - s));
    luaL_addlstring(&b, "[]", 2);
    s = p + slen;
  }
  luaL_addstring(&b, s);
  luaL_pushresult(&b);
  lua_remove(L, -2);
}

/* True if the two bytes "{}" occur in s[0..len). */
static int has_empty_object(const char *s, size_t len) {
  const char *p = s, *end = s + len;
  while ((size_t)(end - p) >= 2 && (p = memchr(p, '{', (size_t)(end - p) - 1)) != NULL) {
    if (p[1] == '}') return 1;
    p++;
  }
  return 0;
}

int kie_json_encode(lua_State *L, int idx) {
  int empties;
  idx = lua_absindex(L, idx);
  /* fast path: cjson writes every empty table as {}, so output without "{}" had
   * none and is final; otherwise (or on failure) the marking path below runs */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_encode);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 2);
  if (lua_type(L, -2) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, -2, &n);
    if (!has_empty_object(s, n)) {
      lua_pop(L, 1);
      return 1;
    }
  }
  lua_pop(L, 2);
  lua_newtable(L);
  empties = count_empty(L, idx, 0, lua_gettop(L));
  lua_pop(L, 1);
  if (empties < 0) {
    lua_pushliteral(L, "a table contains itself (a cycle cannot be JSON)");
    return 0;
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_encode);
  if (empties) copy_marked(L, idx, 0);
  else lua_pushvalue(L, idx);
  lua_call(L, 1, 2);
  if (lua_type(L, -2) != LUA_TSTRING) {
    lua_remove(L, -2);
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "cannot encode request as JSON");
    }
    return 0;
  }
  lua_pop(L, 1);
  if (empties) unmark(L);
  return 1;
}

/* Removes cjson.null values from the table at idx, recursively: [-0, +0]. */
static void strip_null(lua_State *L, int idx, int null_idx, int depth) {
  if (depth > KIE_JSON_DEPTH) return;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, "json nesting");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_rawequal(L, -1, null_idx)) {
      lua_pushvalue(L, -2);
      lua_pushnil(L);
      lua_rawset(L, idx);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
      strip_null(L, -1, null_idx, depth + 1);
    }
    lua_pop(L, 1);
  }
}

/* True if the 4 bytes "null" occur in s[0..len) (a portable memmem). */
static int has_null(const char *s, size_t len) {
  const char *p = s, *end = s + len;
  while ((size_t)(end - p) >= 4 && (p = memchr(p, 'n', (size_t)(end - p) - 3)) != NULL) {
    if (p[1] == 'u' && p[2] == 'l' && p[3] == 'l') return 1;
    p++;
  }
  return 0;
}

int kie_json_decode(lua_State *L, const char *s, size_t len) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_decode);
  lua_pushlstring(L, s, len);
  lua_call(L, 1, 2);
  if (lua_isnil(L, -2)) {
    lua_remove(L, -2);
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "invalid JSON");
    }
    return 0;
  }
  lua_pop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_null);
  if (lua_rawequal(L, -1, -2)) { /* top-level null */
    lua_pop(L, 2);
    lua_pushnil(L);
    return 1;
  }
  /* a null value needs the token null outside a string, so no "null" in the text
   * means nothing to strip (\u escapes cannot spell a literal) */
  if (lua_type(L, -2) == LUA_TTABLE && has_null(s, len)) {
    strip_null(L, -2, lua_gettop(L), 0);
  }
  lua_pop(L, 1);
  return 1;
}
