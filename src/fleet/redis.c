/* redis.c - luaopen_kie_redis: a Redis connection for fleet mode on hiredis's
 * synchronous API (kie.redis; optional, built apart from kie.core).
 *
 *   local redis = require "kie.redis"
 *   local conn, err = redis.connect("redis://127.0.0.1:6379/0", {connect_timeout = 1, timeout = 1})
 *   conn:call("SET", "k", "v")           -> "OK"          | nil, err
 *   conn:eval(script, nkeys, k1, a1...)  -> the script's reply (EVALSHA, else EVAL)
 *   conn:close()
 *
 * Caveats:
 *  - Blocking: every call waits for Redis (bounded by `timeout`); no hiredis callback
 *    exists in the synchronous API, so no Lua code ever runs inside hiredis.
 *  - Failures return nil, err with err = {kind = "fleet", message, code?, retryable,
 *    timeout?}: I/O (refused, reset, timeout: retryable, the context is dropped and the
 *    next call reconnects once before sending; a timeout says "no answer within N s"
 *    and sets timeout = true) and Redis error replies (code = their first word).
 *    A command that failed on I/O is never resent here: it may have run.
 *  - A nil reply is kie.redis.null (light userdata NULL), at every depth.
 *  - The userdata is zeroed and has its metatable before anything can fail; close,
 *    __gc and __close are one idempotent function.
 *  - Arguments are strings or numbers (tostring'd); anything else raises.
 *  - hiredis writes with write(2): on a socket Redis closed that raises SIGPIPE, which
 *    ends a program that does not ignore it. Every hiredis I/O runs with SIGPIPE
 *    blocked in the calling thread; one it raised is taken back (sigtimedwait) before
 *    the mask is restored (redis_nopipe_*), the process's disposition untouched.
 *
 * Stack effects (one line per function):
 *  - redis_parse_url(L, u, url): [-0, +0, m] fills host/port/db/password or returns a message.
 *  - redis_open(u, buf, n): [-0, +0] C only; (re)connects, AUTH, SELECT.
 *  - redis_free(L, u): [-0, +0] frees everything the connection holds.
 *  - redis_run(L, u, argc, argv, lens): [-0, +0|+2, m] the reply is parked in u->pending
 *    (returns 0) or nil, err pushed (returns 2).
 *  - redis_nopipe_begin/end(s): [-0, +0] C only; SIGPIPE blocked around hiredis I/O.
 *  - redis_connect(L): [-2, +1|+2]; redis_call(L): [-n, +1|+2]; redis_eval(L): [-n, +1|+2];
 *    redis_close(L): [-1, +0]; redis_tostring(L): [-1, +1].
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "redis.h"

typedef struct {
  sigset_t old;     /* the thread's mask before */
  int was_pending;  /* a SIGPIPE was pending already: not ours to take */
} redis_nopipe;

/* Blocks SIGPIPE in this thread: [-0, +0]. */
static void redis_nopipe_begin(redis_nopipe *s) {
  sigset_t pipe, pending;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  sigemptyset(&pending);
  sigpending(&pending);
  s->was_pending = sigismember(&pending, SIGPIPE) == 1;
  pthread_sigmask(SIG_BLOCK, &pipe, &s->old);
}

/* Takes back a SIGPIPE the I/O raised, then restores the mask: [-0, +0]. */
static void redis_nopipe_end(redis_nopipe *s) {
  sigset_t pipe, pending;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  sigemptyset(&pending);
  if (!s->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
    struct timespec zero = { 0, 0 };
    while (sigtimedwait(&pipe, NULL, &zero) == -1 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &s->old, NULL);
}

static char *redis_strndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (p != NULL) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

/* Frees the context, the parked reply and the copies; keeps the userdata: [-0, +0]. */
static void redis_free(lua_State *L, redis_conn *u) {
  if (u->pending != NULL) freeReplyObject(u->pending);
  u->pending = NULL;
  if (u->ctx != NULL) redisFree(u->ctx);
  u->ctx = NULL;
  free(u->host);
  u->host = NULL;
  free(u->password);
  u->password = NULL;
  if (u->scripts_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, u->scripts_ref);
  u->scripts_ref = LUA_NOREF;
}

/* redis://[[user]:password@]host[:port][/db]: returns NULL or what is wrong: [-0, +0]. */
static const char *redis_parse_url(redis_conn *u, const char *url) {
  const char *p, *at, *end, *colon, *slash;
  if (strncmp(url, "redis://", 8) != 0) return "the URL must start with redis://";
  p = url + 8;
  slash = strchr(p, '/');
  end = slash ? slash : p + strlen(p);
  at = NULL;
  for (colon = p; colon < end; colon++)
    if (*colon == '@') at = colon;
  if (at != NULL) {
    const char *c = memchr(p, ':', (size_t)(at - p));
    if (c != NULL && at - c > 1) {
      u->password = redis_strndup(c + 1, (size_t)(at - c - 1));
      if (u->password == NULL) return "out of memory";
    }
    p = at + 1;
  }
  colon = memchr(p, ':', (size_t)(end - p));
  if (colon != NULL) {
    char *e;
    long port = strtol(colon + 1, &e, 10);
    if (e != end || port < 1 || port > 65535) return "bad port";
    u->port = (int)port;
  } else {
    colon = end;
    u->port = 6379;
  }
  if (colon == p) return "no host";
  u->host = redis_strndup(p, (size_t)(colon - p));
  if (u->host == NULL) return "out of memory";
  if (slash != NULL && slash[1] != '\0') {
    char *e;
    long db = strtol(slash + 1, &e, 10);
    if (*e != '\0' || db < 0 || db > 1000000) return "bad database number";
    u->db = (int)db;
  }
  return NULL;
}

/* One command on a fresh context, its reply checked; 1 on success: [-0, +0]. */
static int redis_setup_command(redis_conn *u, char *buf, size_t n, int argc, const char **argv) {
  redisReply *r = redisCommandArgv(u->ctx, argc, argv, NULL);
  int ok = r != NULL && r->type != REDIS_REPLY_ERROR;
  if (r == NULL) snprintf(buf, n, "%s: %s", argv[0], u->ctx->errstr);
  else if (!ok) snprintf(buf, n, "%s: %s", argv[0], r->str);
  if (r != NULL) freeReplyObject(r);
  return ok;
}

/* (Re)connects: connect, timeouts, AUTH, SELECT. 1 on success, else 0 and a
 * message in buf, the context dropped. C only: [-0, +0]. */
static int redis_open_io(redis_conn *u, char *buf, size_t n) {
  char db[24];
  const char *auth[2], *sel[2];
  if (u->ctx != NULL) redisFree(u->ctx);
  u->ctx = redisConnectWithTimeout(u->host, u->port, u->connect_timeout);
  if (u->ctx == NULL) {
    snprintf(buf, n, "cannot allocate a Redis context");
    return 0;
  }
  if (u->ctx->err) {
    snprintf(buf, n, "cannot connect to Redis at %s:%d: %s", u->host, u->port, u->ctx->errstr);
    goto fail;
  }
  if (redisSetTimeout(u->ctx, u->timeout) != REDIS_OK) {
    snprintf(buf, n, "cannot set the Redis timeout: %s", u->ctx->errstr);
    goto fail;
  }
  auth[0] = "AUTH";
  auth[1] = u->password;
  if (u->password != NULL && !redis_setup_command(u, buf, n, 2, auth)) goto fail;
  snprintf(db, sizeof db, "%d", u->db);
  sel[0] = "SELECT";
  sel[1] = db;
  if (u->db != 0 && !redis_setup_command(u, buf, n, 2, sel)) goto fail;
  return 1;
fail:
  redisFree(u->ctx);
  u->ctx = NULL;
  return 0;
}

/* redis_open_io with SIGPIPE blocked: [-0, +0]. */
static int redis_open(redis_conn *u, char *buf, size_t n) {
  redis_nopipe np;
  int ok;
  redis_nopipe_begin(&np);
  ok = redis_open_io(u, buf, n);
  redis_nopipe_end(&np);
  return ok;
}

/* Reads a timeout option (seconds) of table idx into tv: [-0, +0]. */
static void redis_opt_timeout(lua_State *L, int idx, const char *name, struct timeval *tv) {
  double s = 0;
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (lua_type(L, -1) != LUA_TNUMBER || !((s = lua_tonumber(L, -1)) > 0) || s > 86400)
    luaL_error(L, "kie.redis.connect: option '%s' must be a number of seconds in (0, 86400]", name);
  lua_pop(L, 1);
  tv->tv_sec = (long)s;
  tv->tv_usec = (long)((s - (double)tv->tv_sec) * 1e6);
}

static redis_conn *redis_check(lua_State *L) {
  return (redis_conn *)luaL_checkudata(L, 1, KIE_REDIS_CONN);
}

/* Runs one command (reconnecting first if the context was dropped). On success the
 * reply is parked in u->pending and 0 returned; else nil, err pushed and 2
 * returned: [-0, +0|+2, m]. */
static int redis_run(lua_State *L, redis_conn *u, int argc, const char **argv, const size_t *lens) {
  char buf[256];
  redisReply *r;
  redis_nopipe np;
  int io_errno;
  if (u->pending != NULL) freeReplyObject(u->pending);
  u->pending = NULL;
  if (u->closed) return reply_push_error(L, "the Redis connection is closed", NULL, 0);
  if (u->ctx == NULL && !redis_open(u, buf, sizeof buf)) return reply_push_error(L, buf, NULL, 1);
  redis_nopipe_begin(&np);
  r = redisCommandArgv(u->ctx, argc, argv, lens);
  io_errno = errno; /* (redis_nopipe_end may change it) */
  redis_nopipe_end(&np);
  if (r == NULL) {
    /* a blocking read past SO_RCVTIMEO fails with EAGAIN: say it plainly */
    int timed_out = u->ctx->err == REDIS_ERR_IO && (io_errno == EAGAIN || io_errno == EWOULDBLOCK);
    if (timed_out)
      snprintf(buf, sizeof buf, "Redis at %s:%d: no answer within %.3g s", u->host, u->port,
               (double)u->timeout.tv_sec + (double)u->timeout.tv_usec / 1e6);
    else
      snprintf(buf, sizeof buf, "Redis at %s:%d: %s", u->host, u->port,
               u->ctx->errstr[0] ? u->ctx->errstr : "connection lost");
    redisFree(u->ctx);
    u->ctx = NULL;
    reply_push_error(L, buf, NULL, 1);
    if (timed_out) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "timeout");
    }
    return 2;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    char code[32];
    size_t i = 0;
    int transient;
    while (i < sizeof code - 1 && i < r->len && r->str[i] != ' ') {
      code[i] = r->str[i];
      i++;
    }
    code[i] = '\0';
    transient = strcmp(code, "LOADING") == 0 || strcmp(code, "BUSY") == 0 ||
                strcmp(code, "TRYAGAIN") == 0 || strcmp(code, "MASTERDOWN") == 0;
    u->pending = r; /* the message is pushed from it */
    reply_push_error(L, NULL, code, transient);
    lua_pushlstring(L, r->str, r->len);
    lua_setfield(L, -2, "message");
    freeReplyObject(r);
    u->pending = NULL;
    return 2;
  }
  u->pending = r;
  return 0;
}

/* Pushes the parked reply and frees it: [-0, +1, m]. */
static int redis_push_pending(lua_State *L, redis_conn *u) {
  reply_push(L, u->pending);
  freeReplyObject(u->pending);
  u->pending = NULL;
  return 1;
}

/* Collects the arguments from stack index `first` on after `pre` fixed words into
 * argv/lens (Lua-managed memory, pushed on the stack): [-0, +1, e]. */
static int redis_args(lua_State *L, int first, int pre, const char ***argv, size_t **lens) {
  int top = lua_gettop(L), argc = pre + (top >= first ? top - first + 1 : 0), i;
  void *mem = lua_newuserdata(L, (size_t)argc * (sizeof(char *) + sizeof(size_t)));
  *argv = (const char **)mem;
  *lens = (size_t *)((char *)mem + (size_t)argc * sizeof(char *));
  for (i = first; i <= top; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_argerror(L, i, "a string or a number expected");
    (*argv)[pre + i - first] = lua_tolstring(L, i, &(*lens)[pre + i - first]);
  }
  return argc;
}

/* conn:call(cmd, ...) -> reply | nil, err: [-n, +1|+2]. */
static int redis_call(lua_State *L) {
  redis_conn *u = redis_check(L);
  const char **argv;
  size_t *lens;
  int argc, n;
  luaL_checkstring(L, 2);
  argc = redis_args(L, 2, 0, &argv, &lens);
  n = redis_run(L, u, argc, argv, lens);
  return n ? n : redis_push_pending(L, u);
}

/* conn:eval(script, nkeys, ...) -> reply | nil, err: EVALSHA of the script's sha1
 * (SCRIPT LOAD once per connection), EVAL when Redis no longer has it: [-n, +1|+2]. */
static int redis_eval(lua_State *L) {
  redis_conn *u = redis_check(L);
  const char **argv;
  size_t *lens;
  int argc, n, cache, sha;
  luaL_checkstring(L, 2);
  luaL_checkinteger(L, 3);
  lua_pushvalue(L, 3);
  lua_tostring(L, -1); /* nkeys as a string, in place */
  lua_replace(L, 3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, u->scripts_ref);
  cache = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_rawget(L, cache);
  sha = lua_gettop(L);
  if (lua_isnil(L, sha)) {
    const char *load[3];
    size_t load_lens[3];
    load[0] = "SCRIPT";
    load_lens[0] = 6;
    load[1] = "LOAD";
    load_lens[1] = 4;
    load[2] = lua_tolstring(L, 2, &load_lens[2]);
    n = redis_run(L, u, 3, load, load_lens);
    if (n) return n;
    lua_pop(L, 1);
    redis_push_pending(L, u);
    if (lua_type(L, -1) != LUA_TSTRING) return reply_push_error(L, "SCRIPT LOAD gave no sha1", NULL, 0);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, cache);
  }
  /* stack: conn script nkeys args... cache sha; argv from index 3 after 2 words */
  lua_insert(L, 3);
  lua_insert(L, 3); /* conn script cache sha nkeys args... */
  argc = redis_args(L, 5, 2, &argv, &lens);
  argv[0] = "EVALSHA";
  lens[0] = 7;
  argv[1] = lua_tolstring(L, 4, &lens[1]);
  n = redis_run(L, u, argc, argv, lens);
  if (n == 0) return redis_push_pending(L, u);
  lua_getfield(L, -1, "code");
  if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "NOSCRIPT") == 0) {
    lua_pop(L, 3);
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = lua_tolstring(L, 2, &lens[1]);
    n = redis_run(L, u, argc, argv, lens);
    return n ? n : redis_push_pending(L, u);
  }
  lua_pop(L, 1);
  return 2;
}

/* conn:close(), __gc, __close: idempotent: [-1, +0]. */
static int redis_close(lua_State *L) {
  redis_conn *u = (redis_conn *)luaL_checkudata(L, 1, KIE_REDIS_CONN);
  u->closed = 1;
  redis_free(L, u);
  return 0;
}

static int redis_tostring(lua_State *L) {
  redis_conn *u = redis_check(L);
  if (u->closed) lua_pushliteral(L, "kie.redis.Conn (closed)");
  else lua_pushfstring(L, "kie.redis.Conn (%s:%d/%d)", u->host ? u->host : "?", u->port, u->db);
  return 1;
}

/* redis.connect(url | {host =, port =, db =, password =}, [opts]) -> conn | nil, err:
 * [-2, +1|+2]. Bad arguments raise; a Redis that cannot be reached returns nil, err. */
static int redis_connect(lua_State *L) {
  char buf[256];
  redis_conn *u;
  int t = lua_type(L, 1);
  if (t != LUA_TSTRING && t != LUA_TTABLE) luaL_argerror(L, 1, "a redis:// URL or a table expected");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  u = (redis_conn *)lua_newuserdata(L, sizeof *u);
  memset(u, 0, sizeof *u);
  u->scripts_ref = LUA_NOREF;
  u->connect_timeout.tv_sec = 1;
  u->timeout.tv_sec = 1;
  luaL_getmetatable(L, KIE_REDIS_CONN);
  lua_setmetatable(L, -2);
  if (t == LUA_TSTRING) {
    const char *bad = redis_parse_url(u, lua_tostring(L, 1));
    if (bad != NULL) return luaL_error(L, "kie.redis.connect: %s in '%s'", bad, lua_tostring(L, 1));
  } else {
    const char *host;
    lua_getfield(L, 1, "host");
    host = lua_isnil(L, -1) ? "127.0.0.1" : lua_tostring(L, -1);
    if (host == NULL) return luaL_error(L, "kie.redis.connect: host must be a string");
    u->host = redis_strndup(host, strlen(host));
    lua_getfield(L, 1, "port");
    u->port = lua_isnil(L, -1) ? 6379 : (int)lua_tointeger(L, -1);
    lua_getfield(L, 1, "db");
    u->db = (int)lua_tointeger(L, -1);
    lua_getfield(L, 1, "password");
    if (lua_isstring(L, -1)) u->password = redis_strndup(lua_tostring(L, -1), lua_rawlen(L, -1));
    lua_pop(L, 4);
    if (u->host == NULL) return luaL_error(L, "kie.redis.connect: out of memory");
    if (u->port < 1 || u->port > 65535 || u->db < 0)
      return luaL_error(L, "kie.redis.connect: bad port or db");
  }
  if (!lua_isnoneornil(L, 2)) {
    redis_opt_timeout(L, 2, "connect_timeout", &u->connect_timeout);
    redis_opt_timeout(L, 2, "timeout", &u->timeout);
  }
  lua_newtable(L);
  u->scripts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (!redis_open(u, buf, sizeof buf)) {
    u->closed = 1;
    redis_free(L, u);
    return reply_push_error(L, buf, NULL, 1);
  }
  return 1;
}

static const luaL_Reg redis_methods[] = {
  { "call", redis_call },
  { "eval", redis_eval },
  { "close", redis_close },
  { NULL, NULL },
};

static const luaL_Reg redis_functions[] = {
  { "connect", redis_connect },
  { NULL, NULL },
};

__attribute__((visibility("default"))) int luaopen_kie_redis(lua_State *L);

/* require "kie.redis" -> the module table: [-0, +1]. */
__attribute__((visibility("default"))) int luaopen_kie_redis(lua_State *L) {
  if (luaL_newmetatable(L, KIE_REDIS_CONN)) {
    luaL_newlib(L, redis_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, redis_close);
    lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
    lua_pushcfunction(L, redis_close);
    lua_setfield(L, -2, "__close");
#endif
    lua_pushcfunction(L, redis_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, KIE_REDIS_CONN);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  luaL_newlib(L, redis_functions);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
