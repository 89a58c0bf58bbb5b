/* reply.c - hiredis replies and failures as Lua values (kie.redis).
 *
 * Caveats:
 *  - Strings and status replies become Lua strings, integers Lua integers (numbers on
 *    5.1/LuaJIT), arrays sequences, a nil reply the sentinel kie.redis.null (a light
 *    userdata NULL) at every depth, so that an array keeps its length.
 *  - An error reply is not converted here: redis.c turns it into nil, err.
 *  - Every function may raise a Lua memory error; the caller parks the reply first
 *    (redis.h) so nothing leaks when it does.
 */
#include <string.h>
#include "redis.h"

/* Pushes the Lua value of r: [-0, +1, m]. */
void reply_push(lua_State *L, const redisReply *r) {
  size_t i;
  luaL_checkstack(L, 3, "kie.redis: reply nested too deep");
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
  case REDIS_REPLY_ERROR:
    lua_pushlstring(L, r->str, (size_t)r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, r->elements > 0x7fffffff ? 0x7fffffff : (int)r->elements, 0);
    for (i = 0; i < r->elements; i++) {
      reply_push(L, r->element[i]);
      lua_rawseti(L, -2, (int)(i + 1));
    }
    break;
  default: /* REDIS_REPLY_NIL */
    lua_pushlightuserdata(L, NULL);
    break;
  }
}

/* Pushes nil and the error table {kind = "fleet", message, code?, retryable};
 * returns 2: [-0, +2, m]. */
int reply_push_error(lua_State *L, const char *message, const char *code, int retryable) {
  lua_pushnil(L);
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "fleet");
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message ? message : "unknown Redis failure");
  lua_setfield(L, -2, "message");
  if (code != NULL) {
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
  }
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
  return 2;
}
