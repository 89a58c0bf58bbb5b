/* kie.c - luaopen_kie_core and the module-level functions of kie.core.
 *
 * Caveats:
 *  - luaopen_kie_core is the only exported symbol; it sets no global.
 *  - It requires cjson.safe once (json.c) and raises a clear error when lua-cjson
 *    is missing.
 *  - now() is CLOCK_MONOTONIC in seconds; sleep() blocks the calling thread and is
 *    meant for scripts (the Lua layer injects its own sleep in games and nginx).
 *
 * Lua-facing (stack effect):
 *  require "kie.core" -> module                                [-0, +1]
 *  core.now() -> seconds                                       [-0, +1]
 *  core.sleep(s)                                               [-0, +0]
 *  core.encode(v) -> json | nil, msg                           [-0, +1|+2]
 *  core.decode(json) -> value | nil, msg                       [-0, +1|+2]
 *  core.decode_task(data) -> data | nil, msg                   [-0, +1|+2]
 *  (core.new: client.c; hmac_sha256_base64, equal: hmac.c; base64_encode: base64.c;
 *  append_line: journal.c)
 */
#include <errno.h>
#include <time.h>
#include <string.h>
#include "kie.h"

/* core.now() -> monotonic seconds: [-0, +1]. */
static int core_now(lua_State *L) {
  lua_pushnumber(L, kie_clock_now());
  return 1;
}

/* core.sleep(seconds): [-0, +0]. */
static int core_sleep(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (!(s > 0)) return 0;
  if (s > 86400) s = 86400;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/* core.encode(value) -> json | nil, msg (empty tables as []): [-0, +1|+2]. */
static int core_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (kie_json_encode(L, 1)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.decode(json) -> value | nil, msg (null becomes nil): [-0, +1|+2]. */
static int core_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (kie_json_decode(L, s, n)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.decode_task(data) -> data with param/resultJson decoded, resultUrls lifted
 * | nil, msg: [-0, +1|+2]. The table is changed in place. */
static int core_decode_task(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (kie_response_decode_task(L, 1)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

static const luaL_Reg funcs[] = {
  {"new", kie_client_new},
  {"now", core_now},
  {"sleep", core_sleep},
  {"encode", core_encode},
  {"decode", core_decode},
  {"decode_task", core_decode_task},
  {NULL, NULL}
};

#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_kie_core(lua_State *L);

#if defined(__GNUC__)
__attribute__((visibility("default")))
#endif
int luaopen_kie_core(lua_State *L) {
  curl_version_info_data *v;
  if (!kie_transfer_global_init()) return luaL_error(L, "kie.core: curl_global_init failed");
  kie_json_init(L);
  kie_client_open(L);
  luaL_newlib(L, funcs);
  kie_hmac_open(L);
  kie_base64_open(L);
  kie_journal_open(L);
  lua_pushliteral(L, KIE_VERSION);
  lua_setfield(L, -2, "_VERSION");
  v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v && v->version ? v->version : "?");
  lua_setfield(L, -2, "curl_version");
  lua_pushstring(L, v && v->ssl_version ? v->ssl_version : "none");
  lua_setfield(L, -2, "ssl_version");
  lua_pushboolean(L, v && (v->features & CURL_VERSION_ASYNCHDNS));
  lua_setfield(L, -2, "async_dns");
  return 1;
}
