/* redis.h - private header of kie.redis (src/fleet/): the connection userdata and
 * the reply bridge shared by redis.c and reply.c.
 *
 * Caveats:
 *  - Only luaopen_kie_redis is exported; everything else is static or hidden.
 *  - A redisReply being turned into Lua values is parked in the connection
 *    (`pending`) so that a Lua memory error mid-way leaks nothing: the next call,
 *    close or __gc frees it.
 */
#ifndef KIE_FLEET_REDIS_H
#define KIE_FLEET_REDIS_H

#include <sys/time.h>
#include <hiredis/hiredis.h>
#include "../compat.h"

#define KIE_REDIS_CONN "kie.redis.Conn"

typedef struct {
  redisContext *ctx;      /* NULL when closed or not (re)connected yet */
  redisReply *pending;    /* a reply being pushed to Lua (see Caveats) */
  char *host;             /* malloc'd copies of where to (re)connect */
  char *password;
  int port;
  int db;
  int closed;             /* close() was called: no reconnect */
  struct timeval connect_timeout;
  struct timeval timeout;
  int scripts_ref;        /* registry ref of {script source -> sha1}, or LUA_NOREF */
} redis_conn;

/* reply.c */
void reply_push(lua_State *L, const redisReply *r);
int reply_push_error(lua_State *L, const char *message, const char *code, int retryable);

#endif /* KIE_FLEET_REDIS_H */
