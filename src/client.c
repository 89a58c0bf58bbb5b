/* client.c - the kie.core.Client userdata and its blocking calls.
 *
 * Caveats:
 *  - The userdata is zeroed and given its metatable before any libcurl handle or
 *    string is created, so __gc is safe on every failure path; close, __gc and
 *    __close are idempotent.
 *  - In-call guard (hiredis's REDIS_IN_CALLBACK): a method that may run Lua code (an
 *    allocation may run a finalizer) holds c->in_call; a close() made meanwhile only
 *    marks the client closed, and the method's end releases it. A transfer being
 *    finished is detached first, so a nested cancel cannot free it; step builds its
 *    list without allocating while it walks. After Lua code ran, a method that has
 *    not sent its request yet checks c->closed and raises instead of sending. A
 *    method that raises halfway (out of memory, a finalizer's error on 5.1-5.3)
 *    leaves the guard held: the client is then released by __gc.
 *  - Wrong argument types raise (programmer errors); everything that depends on
 *    the network or the server returns nil, err.
 *  - The key is kept in C memory only: it is in the Authorization header list and
 *    in api_key (for redaction), never in a Lua value.
 *  - A URL given to call() must start with the configured base or upload URL, so
 *    the key is never sent to another origin.
 *  - progress(id, wait_ms) may drive the multi handle but never marks a transfer
 *    as reported: only step() hands out finished ids, so a blocking loop over
 *    progress() steals nobody's result.
 *
 * Lua-facing (stack effect; "result" is value | nil, err):
 *  core.new(opts) -> client                                   [-0, +1]
 *  client:create_task(req) / get_task(id[, s]) / call(m, p[, body]) / fetch(url,
 *    path[, cap]) -> result; the *_start forms -> transfer id  [-0, +1|+2]
 *  client:step([ms[, budget_ms]]) -> in_flight, {ids} | nil     [-0, +2]
 *  client:result(id) -> result (frees the transfer)           [-0, +1|+2]
 *  client:progress(id[, ms]) -> done, bytes, total | nil       [-0, +1|+3]
 *  client:cancel(id) -> boolean                               [-0, +1]
 *  client:poll_timeout() -> ms | nil                          [-0, +1]
 *  client:wakeup()                                            [-0, +0]
 *  client:pending() -> count                                  [-0, +1]
 *  client:redact(s) -> s redacted | nil (closed)              [-0, +1]
 *  client:close() / __close / __gc                            [-0, +0]
 *  __tostring -> "kie.core.Client (open|closed)"              [-0, +1]
 */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include "kie.h"

/* Returns the open client at idx or raises: [-0, +0]. */
static kie_client *check_open(lua_State *L, int idx) {
  kie_client *c = luaL_checkudata(L, idx, KIE_CLIENT_MT);
  if (c->closed) luaL_error(L, "kie.core: the client is closed");
  return c;
}

static char *dup_str(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/* Reads opts[name] as an optional string into *out (trailing '/' trimmed if trim): [-0, +0]. */
static void opt_string(lua_State *L, const char *name, char **out, int required, int trim) {
  size_t n;
  const char *s;
  lua_getfield(L, 1, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (required) luaL_error(L, "kie.core.new: option '%s' is required", name);
    return;
  }
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "kie.core.new: option '%s' must be a string", name);
  s = lua_tolstring(L, -1, &n);
  if (n == 0 || memchr(s, '\0', n) != NULL || memchr(s, '\n', n) != NULL ||
      memchr(s, '\r', n) != NULL) {
    luaL_error(L, "kie.core.new: option '%s' must be a non-empty single-line string", name);
  }
  while (trim && n > 1 && s[n - 1] == '/') n--;
  *out = dup_str(s, n);
  lua_pop(L, 1);
  if (*out == NULL) luaL_error(L, "kie.core.new: out of memory");
}

/* Reads opts[name] as a number in (0, max] (default def), whole if whole is set;
 * raises `what` otherwise (NaN and infinities included): [-0, +0]. */
static double opt_number(lua_State *L, const char *name, double def, double max, int whole,
                         const char *what) {
  double v = 0;
  lua_getfield(L, 1, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_type(L, -1) != LUA_TNUMBER || !((v = lua_tonumber(L, -1)) > 0 && v <= max) ||
      (whole && v != (double)(long long)v)) {
    luaL_error(L, "kie.core.new: option '%s' must be %s", name, what);
  }
  lua_pop(L, 1);
  return v;
}

#define KIE_SECONDS "a positive number of seconds up to 86400"
#define KIE_MAX_BYTES 9007199254740992.0 /* 2^53: every whole number below is exact */

/* Reads the argument at idx as a transfer id: 0 (no transfer has it) unless it is
 * a whole number in [1, 2^53]; raises if it is no number: [-0, +0]. */
static unsigned long check_id(lua_State *L, int idx) {
  lua_Number v = luaL_checknumber(L, idx);
  if (!(v >= 1 && v <= KIE_MAX_BYTES) || v != (lua_Number)(long long)v) return 0;
  return (unsigned long)v;
}

/* Reads an optional wait in ms at idx (default 0): NaN or < 0 raises, a fraction
 * is dropped, more than an hour (math.huge too) is an hour: [-0, +0]. */
static int opt_wait_ms(lua_State *L, int idx) {
  lua_Number v = luaL_optnumber(L, idx, 0);
  if (!(v >= 0)) luaL_argerror(L, idx, "must be a number >= 0");
  return v > 3600000 ? 3600000 : (int)v;
}

static const char *const known_opts[] = {
  "api_key", "base_url", "upload_url", "timeout", "connect_timeout", "max_response_bytes",
  "ca_file", "ca_path", "proxy", "user_agent", NULL
};

/* core.new(opts) -> client: [-0, +1]. */
static int client_new(lua_State *L) {
  kie_client *c;
  const char *why;
  double mr;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    int i, found = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      for (i = 0; known_opts[i]; i++) found |= strcmp(known_opts[i], lua_tostring(L, -1)) == 0;
    }
    if (!found) {
      return luaL_error(L, "kie.core.new: unknown option '%s'",
                        lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    }
  }
  c = lua_newuserdata(L, sizeof(*c));
  memset(c, 0, sizeof(*c));
  c->wake[0] = c->wake[1] = -1; /* no pipe yet: teardown must not close fd 0 */
  luaL_getmetatable(L, KIE_CLIENT_MT);
  lua_setmetatable(L, -2);
  opt_string(L, "api_key", &c->api_key, 1, 0);
  opt_string(L, "base_url", &c->base_url, 1, 1);
  opt_string(L, "upload_url", &c->upload_url, 0, 1);
  opt_string(L, "ca_file", &c->ca_file, 0, 0);
  opt_string(L, "ca_path", &c->ca_path, 0, 0);
  opt_string(L, "proxy", &c->proxy, 0, 0);
  opt_string(L, "user_agent", &c->user_agent, 0, 0);
  if (c->user_agent == NULL && (c->user_agent = dup_str("lua-kie/" KIE_VERSION, strlen("lua-kie/" KIE_VERSION))) == NULL) {
    return luaL_error(L, "kie.core.new: out of memory");
  }
  c->timeout_ms = kie_clock_ms(opt_number(L, "timeout", 30, KIE_MAX_MS / 1000, 0, KIE_SECONDS));
  c->connect_timeout_ms =
    kie_clock_ms(opt_number(L, "connect_timeout", 10, KIE_MAX_MS / 1000, 0, KIE_SECONDS));
  mr = opt_number(L, "max_response_bytes", KIE_DEFAULT_MAX_RESPONSE, KIE_MAX_BYTES, 1,
                  "a whole number from 1 to 2^53");
  c->max_response = (size_t)mr;
  if ((why = kie_transfer_setup(c)) != NULL) return luaL_error(L, "kie.core.new: %s", why);
  return 1;
}

/* Releases everything the client holds, once; the key's copies are wiped. */
static void client_free(kie_client *c) {
  if (c->freed) return;
  c->freed = 1;
  c->closed = 1;
  kie_transfer_teardown(c);
  if (c->api_key) kie_buf_wipe(c->api_key, strlen(c->api_key));
  free(c->api_key);
  free(c->base_url);
  free(c->upload_url);
  free(c->ca_file);
  free(c->ca_path);
  free(c->proxy);
  free(c->user_agent);
  c->api_key = c->base_url = c->upload_url = NULL;
  c->ca_file = c->ca_path = c->proxy = c->user_agent = NULL;
}

/* client:close() / __close: idempotent. Inside a C method (a finalizer or a
 * metamethod run by it) the release waits for the method's end: [-0, +0]. */
static int client_close(lua_State *L) {
  kie_client *c = luaL_checkudata(L, 1, KIE_CLIENT_MT);
  c->closed = 1;
  if (c->in_call == 0) client_free(c);
  return 0;
}

/* __gc: nothing can run a method on an unreachable client, so in_call (stale
 * after a method raised) does not matter here: [-0, +0]. */
static int client_gc(lua_State *L) {
  client_free(luaL_checkudata(L, 1, KIE_CLIENT_MT));
  return 0;
}

/* A method that may run Lua code (an allocation may run a finalizer) enters the
 * client after its argument checks and leaves it on the way out. */
void kie_client_enter(kie_client *c) { c->in_call++; }

/* Leaves the client: the last one out does a close() made meanwhile. nret < 0:
 * the client was closed before the request went out: raises that: [-0, +0]. */
int kie_client_leave(lua_State *L, kie_client *c, int nret) {
  if (--c->in_call == 0 && c->closed) client_free(c);
  if (nret < 0) return luaL_error(L, "kie.core: the client is closed");
  return nret;
}

/* Pushes the decoded result of a finished transfer and frees it. x is detached
 * first: a finalizer run by the decoding cannot cancel or free it: [-0, +1|+2]. */
static int finish(lua_State *L, kie_client *c, kie_xfer *x) {
  int n;
  kie_transfer_detach(c, x);
  if (x->op == KIE_OP_FETCH) {
    FILE *f = x->sink;
    x->sink = NULL;
    if (f != NULL && fclose(f) != 0 && x->result == CURLE_OK && !x->io_error) {
      x->io_error = errno ? errno : EIO;
    }
    n = kie_response_push_fetch(L, c, x);
    free(x->sink_path); /* the result is taken: the file is the caller's now */
    x->sink_path = NULL;
  } else {
    n = kie_response_push(L, c, x);
  }
  kie_transfer_free(c, x);
  return n;
}

/* For a started transfer: async pushes its id; blocking runs it to the end and
 * pushes its result (and frees it): [-0, +1|+2]. */
int kie_client_settle(lua_State *L, kie_client *c, kie_xfer *x, int async) {
  if (async) {
    lua_pushinteger(L, (lua_Integer)x->id);
    return 1;
  }
  kie_transfer_wait(c, x);
  return finish(L, c, x);
}

/* Starts a transfer; async: pushes its id; blocking: runs it and pushes its result.
 * timeout_ms > 0 shortens the client's timeout for it. On a failure to start pushes
 * nil, err. Owns sink from here on: [-0, +1|+2]. */
static int launch(lua_State *L, kie_client *c, kie_op op, const char *method, const char *url,
                  const char *body, size_t len, FILE *sink, size_t cap, long timeout_ms,
                  const char *task_id, int async) {
  const char *why = NULL;
  kie_xfer *x = kie_transfer_start(c, op, method, url, body, len, sink, cap, timeout_ms, &why);
  if (x == NULL) {
    if (sink != NULL) fclose(sink);
    return kie_response_error(L, c, "network", why, 0);
  }
  if (task_id != NULL) x->task_id = dup_str(task_id, strlen(task_id));
  return kie_client_settle(L, c, x, async);
}

/* base .. path (plen bytes) in buf when it fits, else pushed on the stack (libcurl
 * copies the URL, so buf only has to outlive the launch): [-0, +0|+1]. */
static const char *make_url(lua_State *L, char *buf, size_t cap, const char *base,
                            const char *path, size_t plen) {
  size_t blen = strlen(base);
  if (blen + plen < cap) {
    memcpy(buf, base, blen);
    memcpy(buf + blen, path, plen);
    buf[blen + plen] = '\0';
    return buf;
  }
  lua_pushstring(L, base);
  lua_pushlstring(L, path, plen);
  lua_concat(L, 2);
  return lua_tostring(L, -1);
}

/* Pushes base_url .. path: [-0, +1]. */
static const char *push_url(lua_State *L, const char *base, const char *path) {
  lua_pushstring(L, base);
  lua_pushstring(L, path);
  lua_concat(L, 2);
  return lua_tostring(L, -1);
}

/* True if s has only the characters curl_easy_escape leaves as they are. */
static int url_safe(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-' || ch == '.' || ch == '_' || ch == '~')) {
      return 0;
    }
  }
  return 1;
}

/* Encodes the table at idx; on failure pushes nil, validation error: [-0, +1|+2]. */
static int encode_body(lua_State *L, kie_client *c, int idx, const char *op) {
  if (kie_json_encode(L, idx)) return 1;
  lua_pushfstring(L, "%s: the request cannot be encoded as JSON: %s", op, lua_tostring(L, -1));
  kie_response_error(L, c, "validation", lua_tostring(L, -1), 0);
  return 0;
}

/* create_task(request): [-0, +1|+2]. */
static int create_task(lua_State *L, int async) {
  kie_client *c = check_open(L, 1);
  const char *url, *body;
  size_t len;
  char buf[KIE_URL_BUF];
  static const char path[] = "/api/v1/jobs/createTask";
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  kie_client_enter(c);
  if (!encode_body(L, c, 2, "create_task")) return kie_client_leave(L, c, 2);
  body = lua_tolstring(L, 3, &len);
  url = make_url(L, buf, sizeof(buf), c->base_url, path, sizeof(path) - 1);
  if (c->closed) return kie_client_leave(L, c, -1); /* by Lua code run while encoding */
  return kie_client_leave(L, c, launch(L, c, KIE_OP_CREATE, "POST", url, body, len, NULL, 0, 0,
                                       NULL, async));
}

/* get_task's work once its arguments are checked (id, n at index 2): [-0, +1|+2]. */
static int get_task_go(lua_State *L, kie_client *c, const char *id, size_t n, long tmo,
                       int async) {
  char *esc;
  const char *url;
  char buf[KIE_URL_BUF];
  if (n == 0) {
    int r = kie_response_error(L, c, "validation", "get_task: task_id is empty", 0);
    lua_pushliteral(L, "get_task");
    lua_setfield(L, -2, "op");
    return r;
  }
  if (url_safe(id, n)) { /* task ids are: no escaping, no Lua string */
    static const char pre[] = "/api/v1/jobs/recordInfo?taskId=";
    size_t blen = strlen(c->base_url);
    if (blen + sizeof(pre) - 1 + n < sizeof(buf)) {
      memcpy(buf, c->base_url, blen);
      memcpy(buf + blen, pre, sizeof(pre) - 1);
      memcpy(buf + blen + sizeof(pre) - 1, id, n);
      buf[blen + sizeof(pre) - 1 + n] = '\0';
      return launch(L, c, KIE_OP_GET, "GET", buf, NULL, 0, NULL, 0, tmo, id, async);
    }
  }
  esc = curl_easy_escape(NULL, id, (int)n);
  if (esc == NULL) return kie_response_error(L, c, "network", "get_task: out of memory", 0);
  lua_pushstring(L, c->base_url);
  lua_pushliteral(L, "/api/v1/jobs/recordInfo?taskId=");
  lua_pushstring(L, esc);
  curl_free(esc);
  lua_concat(L, 3);
  url = lua_tostring(L, -1);
  if (c->closed) return -1;
  return launch(L, c, KIE_OP_GET, "GET", url, NULL, 0, NULL, 0, tmo, id, async);
}

/* get_task(task_id[, timeout_s]): timeout_s shortens the client's request timeout
 * for this read (wait's deadline): [-0, +1|+2]. */
static int get_task(lua_State *L, int async) {
  kie_client *c = check_open(L, 1);
  size_t n;
  const char *id = luaL_checklstring(L, 2, &n);
  lua_Number t = luaL_optnumber(L, 3, 0);
  long tmo;
  if (t != t || t < 0) return luaL_argerror(L, 3, "must be a number >= 0");
  lua_settop(L, 2);
  tmo = kie_clock_ms(t);
  kie_client_enter(c);
  return kie_client_leave(L, c, get_task_go(L, c, id, n, tmo, async));
}

/* True if url is base itself or lies below it ("base/..." or "base?..."). */
static int under(const char *url, const char *base) {
  size_t n;
  if (base == NULL) return 0;
  n = strlen(base);
  return strncmp(url, base, n) == 0 && (url[n] == '\0' || url[n] == '/' || url[n] == '?');
}

/* call(method, path_or_url[, body_table]): a GET with a body raises (it would
 * go out as a POST): [-0, +1|+2]. */
static int call(lua_State *L, int async) {
  kie_client *c = check_open(L, 1);
  const char *method = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  const char *url, *body = NULL;
  size_t len = 0;
  if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) {
    return luaL_argerror(L, 2, "method must be \"GET\" or \"POST\"");
  }
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  if (!lua_isnoneornil(L, 4) && method[0] == 'G') return luaL_argerror(L, 4, "a GET carries no body");
  lua_settop(L, 4);
  if (path[0] != '/' && !under(path, c->base_url) && !under(path, c->upload_url)) {
    return luaL_argerror(L, 3, "must be a path or a URL under base_url/upload_url "
                               "(the API key is never sent to another host)");
  }
  kie_client_enter(c);
  if (path[0] == '/') {
    url = push_url(L, c->base_url, path);
  } else {
    lua_pushvalue(L, 3);
    url = lua_tostring(L, -1);
  }
  if (!lua_isnil(L, 4)) {
    if (!encode_body(L, c, 4, "call")) return kie_client_leave(L, c, 2);
    body = lua_tolstring(L, -1, &len);
  }
  if (c->closed) return kie_client_leave(L, c, -1); /* by Lua code run while encoding */
  return kie_client_leave(L, c, launch(L, c, KIE_OP_CALL, method, url, body, len, NULL, 0, 0,
                                       NULL, async));
}

/* fetch(url, path[, max_bytes[, timeout_s]]): downloads url into the file at path
 * (created or truncated), without the key; timeout_s (> 0) replaces the client's
 * request timeout for this transfer: [-0, +1|+2]. Result: true, bytes | nil, err. */
static int fetch(lua_State *L, int async) {
  kie_client *c = check_open(L, 1);
  const char *url = luaL_checkstring(L, 2);
  const char *path = luaL_checkstring(L, 3);
  lua_Number cap = luaL_optnumber(L, 4, 0);
  lua_Number t = luaL_optnumber(L, 5, 0);
  long tmo;
  FILE *f;
  int n;
  if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
    return luaL_argerror(L, 2, "must be an http(s) URL");
  }
  if (!(cap >= 0)) return luaL_argerror(L, 4, "must be a number >= 0");
  if (cap > KIE_MAX_BYTES) cap = KIE_MAX_BYTES; /* math.huge: no cap of its own */
  if (t != t || t < 0) return luaL_argerror(L, 5, "must be a number >= 0");
  tmo = kie_clock_ms(t);
  kie_client_enter(c);
  f = fopen(path, "wb");
  if (f == NULL) {
    lua_pushfstring(L, "download: cannot write %s: %s", path, strerror(errno));
    kie_response_error(L, c, "io", lua_tostring(L, -1), 0);
    return kie_client_leave(L, c, 2);
  }
  n = launch(L, c, KIE_OP_FETCH, "GET", url, NULL, 0, f, (size_t)cap, tmo, NULL, async);
  if (async && lua_type(L, -1) == LUA_TNUMBER) {
    /* a started download that ends without its result being taken (cancel,
     * close, collection) removes its partial file */
    kie_xfer *x = kie_transfer_find(c, (unsigned long)lua_tointeger(L, -1));
    if (x != NULL) x->sink_path = dup_str(path, strlen(path));
  }
  return kie_client_leave(L, c, n);
}

static int client_create_task(lua_State *L) { return create_task(L, 0); }
static int client_create_task_start(lua_State *L) { return create_task(L, 1); }
static int client_get_task(lua_State *L) { return get_task(L, 0); }
static int client_get_task_start(lua_State *L) { return get_task(L, 1); }
static int client_call(lua_State *L) { return call(L, 0); }
static int client_call_start(lua_State *L) { return call(L, 1); }
static int client_fetch(lua_State *L) { return fetch(L, 0); }
static int client_fetch_start(lua_State *L) { return fetch(L, 1); }

/* client:step([timeout_ms[, budget_ms]]) -> in_flight, {done ids} | nil. Never
 * blocks with 0; waits at most timeout_ms for activity otherwise. With budget_ms,
 * stops handing ready sockets to libcurl once that much time has passed (the rest
 * wait for the next step): [-0, +2]. */
static int client_step(lua_State *L) {
  kie_client *c = check_open(L, 1);
  int ms = opt_wait_ms(L, 2);
  lua_Number budget = luaL_optnumber(L, 3, -1); /* < 0: no budget */
  kie_xfer *x;
  int running = 0, done = 0;
  if (!lua_isnoneornil(L, 3) && !(budget >= 0)) return luaL_argerror(L, 3, "must be >= 0");
  kie_transfer_perform(c, ms, budget < 0 ? -1 : budget / 1000, NULL);
  for (x = c->live; x != NULL; x = x->next) {
    if (!x->done) running++;
    else if (!x->reported) done++;
  }
  if (done == 0) {
    lua_pushinteger(L, running);
    lua_pushnil(L);
    return 2;
  }
  /* the table is made before the walk: an allocation may run a finalizer that
   * changes the list (cancel, close: deferred), so the walk itself allocates nothing */
  kie_client_enter(c);
  lua_createtable(L, done, 0);
  running = done = 0;
  for (x = c->live; x != NULL; x = x->next) {
    if (!x->done) {
      running++;
    } else if (!x->reported) {
      x->reported = 1;
      lua_pushinteger(L, (lua_Integer)x->id);
      lua_rawseti(L, -2, ++done);
    }
  }
  lua_pushinteger(L, running);
  lua_insert(L, -2);
  return kie_client_leave(L, c, 2);
}

/* Returns the live transfer with the id at idx, or raises: [-0, +0]. */
static kie_xfer *check_xfer(lua_State *L, kie_client *c, int idx) {
  kie_xfer *x = kie_transfer_find(c, check_id(L, idx));
  if (x == NULL) luaL_argerror(L, idx, "no such transfer (finished, canceled or unknown)");
  return x;
}

/* client:result(id) -> the call's results; frees the transfer: [-0, +1|+2]. */
static int client_result(lua_State *L) {
  kie_client *c = check_open(L, 1);
  kie_xfer *x = check_xfer(L, c, 2);
  if (!x->done) return luaL_argerror(L, 2, "transfer has not finished (see step)");
  kie_client_enter(c);
  return kie_client_leave(L, c, finish(L, c, x));
}

/* client:progress(id[, wait_ms]) -> done, bytes, total | nil (no such transfer).
 * With wait_ms > 0 first drives the client's transfers for at most that long or
 * until this one finishes, without handing out anybody's results (step does
 * that). bytes/total count the response body, or the request body of an upload;
 * total is nil while unknown: [-0, +1|+3]. */
static int client_progress(lua_State *L) {
  kie_client *c = check_open(L, 1);
  kie_xfer *x = kie_transfer_find(c, check_id(L, 2));
  int ms = opt_wait_ms(L, 3);
  curl_off_t now = 0, total = -1;
  if (x == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (ms > 0 && !x->done && !kie_transfer_perform(c, ms, -1, x)) {
    x->done = 1; /* the multi handle failed: end it as kie_transfer_wait does */
    x->result = CURLE_FAILED_INIT;
  }
  if (x->op == KIE_OP_UPLOAD) {
    curl_easy_getinfo(x->easy, CURLINFO_SIZE_UPLOAD_T, &now);
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &total);
  } else {
    now = (curl_off_t)x->received;
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &total);
  }
  lua_pushboolean(L, x->done);
  lua_pushinteger(L, (lua_Integer)now);
  if (total >= 0) lua_pushinteger(L, (lua_Integer)total);
  else lua_pushnil(L);
  return 3;
}

/* client:cancel(id) -> true if a live transfer was dropped: [-0, +1]. */
static int client_cancel(lua_State *L) {
  kie_client *c = check_open(L, 1);
  kie_xfer *x = kie_transfer_find(c, check_id(L, 2));
  if (x != NULL) kie_transfer_free(c, x);
  lua_pushboolean(L, x != NULL);
  return 1;
}

/* client:poll_timeout() -> ms a host may sleep before the next step, or nil: [-0, +1]. */
static int client_poll_timeout(lua_State *L) {
  kie_client *c = check_open(L, 1);
  long ms = -1;
  kie_xfer *x;
  for (x = c->live; x != NULL && !c->unread; x = x->next) {
    if (x->done && !x->reported) break;
  }
  if (c->unread || x != NULL) { /* answers read or ready, not handed out yet */
    lua_pushinteger(L, 0);
    return 1;
  }
  if (c->live == NULL || curl_multi_timeout(c->multi, &ms) != CURLM_OK || ms < 0) {
    if (c->live == NULL) lua_pushnil(L);
    else lua_pushinteger(L, 1000); /* transfers but no timer: sockets will wake step */
    return 1;
  }
  lua_pushinteger(L, ms);
  return 1;
}

/* client:wakeup(): makes a blocking step() in another thread return: [-0, +0]. */
static int client_wakeup(lua_State *L) {
  kie_client *c = check_open(L, 1);
  kie_events_wakeup(c);
  return 0;
}

/* client:pending() -> number of transfers not yet handed back by result: [-0, +1]. */
static int client_pending(lua_State *L) {
  kie_client *c = check_open(L, 1);
  kie_xfer *x;
  lua_Integer n = 0;
  for (x = c->live; x != NULL; x = x->next) n++;
  lua_pushinteger(L, n);
  return 1;
}

/* client:redact(s) -> s with every copy of the key replaced by "[redacted]", in
 * one linear pass over s; nil on a closed client (the key is gone): [-0, +1]. */
static int client_redact(lua_State *L) {
  kie_client *c = luaL_checkudata(L, 1, KIE_CLIENT_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (c->closed) {
    lua_pushnil(L);
    return 1;
  }
  kie_client_enter(c);
  kie_response_redacted(L, c, s, n);
  return kie_client_leave(L, c, 1);
}

/* __tostring: never shows the key: [-0, +1]. */
static int client_tostring(lua_State *L) {
  kie_client *c = luaL_checkudata(L, 1, KIE_CLIENT_MT);
  lua_pushfstring(L, "kie.core.Client (%s)", c->closed ? "closed" : "open");
  return 1;
}

static const luaL_Reg methods[] = {
  {"create_task", client_create_task},
  {"get_task", client_get_task},
  {"call", client_call},
  {"fetch", client_fetch},
  {"create_task_start", client_create_task_start},
  {"get_task_start", client_get_task_start},
  {"call_start", client_call_start},
  {"fetch_start", client_fetch_start},
  {"upload", kie_upload_run},
  {"upload_start", kie_upload_start},
  {"progress", client_progress},
  {"step", client_step},
  {"result", client_result},
  {"cancel", client_cancel},
  {"poll_timeout", client_poll_timeout},
  {"wakeup", client_wakeup},
  {"pending", client_pending},
  {"redact", client_redact},
  {"close", client_close},
  {NULL, NULL}
};

void kie_client_open(lua_State *L) {
  if (luaL_newmetatable(L, KIE_CLIENT_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
    lua_pushcfunction(L, client_close);
    lua_setfield(L, -2, "__close");
#endif
    lua_pushcfunction(L, client_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "kie.core.Client");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
}

/* core.new is registered by kie.c through this accessor: [-0, +1]. */
int kie_client_new(lua_State *L) { return client_new(L); }

/* The open client at idx, for upload.c; raises otherwise: [-0, +0]. */
kie_client *kie_client_check(lua_State *L, int idx) { return check_open(L, idx); }
