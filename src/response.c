/* response.c - turns a finished transfer into a Lua result or a typed error table.
 *
 * Caveats:
 *  - Success is HTTP 2xx AND body code == 200 (AND, for the upload host's envelope
 *    {success, code, msg, data}, success not false); the body's code decides the
 *    kind when there is one, else the HTTP status does. msg or message is read.
 *  - Errors are plain tables {kind, message, code, status, retryable, retry_after,
 *    curl_code, task_id, op}; the Lua layer (kie.errors) gives them a metatable.
 *  - retryable is decided per operation: a create is retryable only on 429/455 or
 *    when the request surely never reached the server; a create that may have
 *    reached it (timeout or reset after sending) is kind "unknown_outcome".
 *  - Every server text is passed through kie_response_redacted so the API key never
 *    reaches an error, even if a server echoes it.
 *  - May raise only on out-of-memory (lua_* allocation); the transfer stays owned
 *    by its caller (client.c's finish) and is freed by close/__gc in that case.
 *
 * C functions on the Lua stack (stack effect):
 *  kie_response_push(L, c, x) -> result of an API exchange     [-0, +1|+2]
 *  kie_response_push_fetch(L, c, x) -> true, bytes | nil, err  [-0, +2]
 *  kie_response_error(L, c, kind, msg, retryable) -> nil, err  [-0, +2]
 *  kie_response_decode_task(L, idx) -> 1 | 0 and a message     [-0, +0|+1]
 *  kie_response_redacted(L, c, s, n) -> s with the key replaced [-0, +1]
 */
#define _GNU_SOURCE /* memmem */
#include <string.h>
#include <stdio.h>
#include "kie.h"

static const char *op_name(kie_op op) {
  switch (op) {
  case KIE_OP_CREATE: return "create_task";
  case KIE_OP_GET: return "get_task";
  case KIE_OP_FETCH: return "download";
  case KIE_OP_UPLOAD: return "upload";
  default: return "call";
  }
}

/* Maps a body code (or HTTP status) to a kind and whether an idempotent call may retry. */
static const char *kind_of(long code, int *retryable) {
  *retryable = 0;
  switch (code) {
  case 400: return "invalid";
  case 401: return "auth";
  case 402: return "credits";
  case 404: return "not_found";
  case 408: *retryable = 1; return "server";
  case 422: return "invalid";
  case 429: *retryable = 1; return "rate_limited";
  case 433: return "key_limit";
  case 455: *retryable = 1; return "maintenance";
  case 500: *retryable = 1; return "server";
  case 501: return "generation_failed";
  case 505: return "disabled";
  default:
    *retryable = code >= 500 && code <= 599;
    return "http";
  }
}

/* Returns the first occurrence of key (klen > 0) in [p, end), or NULL; memmem
 * (two-way search) is linear in the text whatever the key. */
static const char *find_key(const char *p, const char *end, const char *key, size_t klen) {
  return memmem(p, (size_t)(end - p), key, klen);
}

void kie_response_redacted(lua_State *L, kie_client *c, const char *s, size_t len) {
  size_t klen = c->api_key ? strlen(c->api_key) : 0;
  const char *p = s, *end = s + len, *hit;
  luaL_Buffer b;
  if (klen == 0 || (hit = find_key(p, end, c->api_key, klen)) == NULL) {
    lua_pushlstring(L, s, len); /* the usual case: no key, no buffer */
    return;
  }
  luaL_buffinit(L, &b);
  do {
    luaL_addlstring(&b, p, (size_t)(hit - p));
    luaL_addstring(&b, "[redacted]");
    p = hit + klen;
  } while ((hit = find_key(p, end, c->api_key, klen)) != NULL);
  luaL_addlstring(&b, p, (size_t)(end - p));
  luaL_pushresult(&b);
}

int kie_response_error(lua_State *L, kie_client *c, const char *kind, const char *message,
                   int retryable) {
  lua_pushnil(L);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  kie_response_redacted(L, c, message, strlen(message));
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, retryable);
  lua_setfield(L, -2, "retryable");
  return 2;
}

/* Sets err.field = integer v on the error table at -1: [-0, +0]. */
static void set_int(lua_State *L, const char *field, long v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, field);
}

/* Adds op, status, task_id and retry_after to the error table at -1: [-0, +0]. */
static void decorate(lua_State *L, kie_xfer *x, const char *task_id) {
  double ra;
  lua_pushstring(L, op_name(x->op));
  lua_setfield(L, -2, "op");
  if (x->status > 0) set_int(L, "status", x->status);
  if (task_id) {
    lua_pushstring(L, task_id);
    lua_setfield(L, -2, "task_id");
  }
  ra = kie_retry_after_seconds(x->retry_after);
  if (ra >= 0) {
    lua_pushnumber(L, ra);
    lua_setfield(L, -2, "retry_after");
  }
}

/* Pushes nil, err for a transfer that failed in libcurl: [-0, +2]. */
static int transport_error(lua_State *L, kie_client *c, kie_xfer *x, const char *task_id) {
  char msg[CURL_ERROR_SIZE + 160];
  const char *kind = x->result == CURLE_OPERATION_TIMEDOUT ? "timeout" : "network";
  int retryable;
  const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result);
  if (x->op == KIE_OP_UPLOAD && x->result == CURLE_READ_ERROR) {
    snprintf(msg, sizeof(msg), "upload: reading the file failed (%s)", detail);
    kie_response_error(L, c, "io", msg, 0);
    set_int(L, "curl_code", (long)x->result);
    decorate(L, x, task_id);
    return 2;
  }
  if (x->too_large || x->result == CURLE_FILESIZE_EXCEEDED) {
    snprintf(msg, sizeof(msg), "%s: response body exceeds its cap (%lu bytes)",
             op_name(x->op), (unsigned long)x->cap);
    kie_response_error(L, c, "too_large", msg, 0);
    decorate(L, x, task_id);
    return 2;
  }
  switch (x->result) {
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_FAILED_INIT:
    retryable = 0;
    break;
  default:
    retryable = 1;
  }
  if (x->op == KIE_OP_CREATE && kie_transfer_reached_server(x)) {
    snprintf(msg, sizeof(msg),
             "create_task: %s after the request may have reached the server (%s); "
             "the task may exist and was not resent",
             x->result == CURLE_OPERATION_TIMEDOUT ? "timed out" : "connection failed", detail);
    kie_response_error(L, c, "unknown_outcome", msg, 0);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "cause");
  } else {
    snprintf(msg, sizeof(msg), "%s: %s (%s)", op_name(x->op),
             x->result == CURLE_OPERATION_TIMEDOUT ? "timed out" : "transport failure", detail);
    kie_response_error(L, c, kind, msg, retryable);
  }
  set_int(L, "curl_code", (long)x->result);
  decorate(L, x, task_id);
  return 2;
}

/* Pushes nil, err for an API error with body code `code` (or HTTP status): [-0, +2]. */
static int api_error(lua_State *L, kie_client *c, kie_xfer *x, long code, int has_code,
                     int msg_idx, const char *task_id) {
  int retryable;
  const char *kind = kind_of(code, &retryable);
  char head[96];
  if (x->op == KIE_OP_CREATE) retryable = code == 429 || code == 455;
  snprintf(head, sizeof(head), "%s: %s %ld", op_name(x->op), has_code ? "code" : "HTTP", code);
  kie_response_error(L, c, kind, head, retryable);
  if (msg_idx) {
    lua_pushstring(L, head);
    lua_pushliteral(L, ": ");
    lua_pushvalue(L, msg_idx); /* already redacted */
    lua_concat(L, 3);
    lua_setfield(L, -2, "message");
  }
  if (has_code) set_int(L, "code", code);
  decorate(L, x, task_id);
  return 2;
}

/* Decodes data.param / data.resultJson strings of a task table at idx, lifts resultUrls.
 * Returns 1, or 0 with an error message pushed: [-0, +0 | +1]. */
int kie_response_decode_task(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_getfield(L, idx, "param");
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (n > 0 && kie_json_decode(L, s, n)) lua_setfield(L, idx, "param");
    else if (n > 0) lua_pop(L, 1); /* the decode error: keep param as the string it was */
    /* (n == 0 pushed nothing, so there is nothing to pop) */
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "resultJson");
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (n == 0) {
      lua_pushnil(L);
      lua_setfield(L, idx, "resultJson");
    } else if (kie_json_decode(L, s, n)) {
      lua_setfield(L, idx, "resultJson");
    } else {
      lua_pop(L, 2);
      lua_pushliteral(L, "resultJson is not valid JSON");
      return 0;
    }
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "resultJson");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "resultUrls");
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
    }
  } else {
    lua_newtable(L);
  }
  lua_setfield(L, idx, "resultUrls");
  lua_pop(L, 1);
  return 1;
}

/* Pushes nil, protocol error with message `what`: [-0, +2]. */
static int protocol_error(lua_State *L, kie_client *c, kie_xfer *x, const char *what,
                          const char *task_id) {
  char msg[256];
  snprintf(msg, sizeof(msg), "%s: unexpected response (HTTP %ld): %s", op_name(x->op),
           x->status, what);
  kie_response_error(L, c, "protocol", msg, 0);
  decorate(L, x, task_id);
  return 2;
}

/* Pushes a short, redacted, printable excerpt of a non-JSON body: [-0, +1]. The
 * whole body is redacted before it is cut: a key crossing the cut would otherwise
 * leave its first bytes unmatched. */
static void push_excerpt(lua_State *L, kie_client *c, kie_xfer *x) {
  char tmp[121];
  size_t i, n, len;
  const char *s;
  kie_response_redacted(L, c, x->resp.data, x->resp.len);
  s = lua_tolstring(L, -1, &len);
  n = len < 120 ? len : 120;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    tmp[i] = (ch < 32 || ch > 126) ? ' ' : (char)ch;
  }
  tmp[n] = '\0';
  lua_pushfstring(L, "non-JSON body: %s", tmp);
  lua_remove(L, -2);
}

/* For a create, turns the error on top into unknown_outcome when the server got
 * the request and may have created the task: its answer was unreadable
 * (protocol, too_large) or a gateway's 5xx page (http): [-0, +0]. */
static void create_outcome(lua_State *L, kie_client *c, kie_xfer *x) {
  const char *kind;
  lua_getfield(L, -1, "kind");
  kind = lua_tostring(L, -1);
  if (kind != NULL && (strcmp(kind, "protocol") == 0 || strcmp(kind, "too_large") == 0 ||
                       (strcmp(kind, "http") == 0 && x->status >= 500))) {
    lua_setfield(L, -2, "cause");
    lua_pushliteral(L, "unknown_outcome");
    lua_setfield(L, -2, "kind");
    lua_pushliteral(L, "create_task: the request reached the server but its answer was not "
                       "understood (");
    lua_getfield(L, -2, "message");
    lua_pushliteral(L, "); the task may exist and was not resent");
    lua_concat(L, 3);
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "retryable");
    (void)c;
  } else {
    lua_pop(L, 1);
  }
}

static int push_response(lua_State *L, kie_client *c, kie_xfer *x);

int kie_response_push(lua_State *L, kie_client *c, kie_xfer *x) {
  int n = push_response(L, c, x);
  if (n == 2 && x->op == KIE_OP_CREATE) create_outcome(L, c, x);
  return n;
}

/* Pushes the decoded result of an API exchange: [-0, +1|+2]. */
static int push_response(lua_State *L, kie_client *c, kie_xfer *x) {
  const char *task_id = x->task_id;
  int ok2xx = x->status >= 200 && x->status < 300;
  int top = lua_gettop(L), body, msg_idx = 0;
  long code;
  if (x->result != CURLE_OK) return transport_error(L, c, x, task_id);
  if (x->resp.len == 0 || !kie_json_decode(L, x->resp.data ? x->resp.data : "", x->resp.len)) {
    if (x->resp.len > 0) lua_pop(L, 1);
    if (ok2xx) {
      return protocol_error(L, c, x, x->resp.len ? "body is not valid JSON" : "empty body",
                            task_id);
    }
    if (x->resp.len) push_excerpt(L, c, x);
    else lua_pushliteral(L, "empty body");
    return api_error(L, c, x, x->status, 0, top + 1, task_id);
  }
  body = lua_gettop(L);
  if (lua_type(L, body) != LUA_TTABLE) {
    lua_settop(L, top);
    if (ok2xx) return protocol_error(L, c, x, "body is not a JSON object", task_id);
    lua_pushliteral(L, "body is not a JSON object");
    return api_error(L, c, x, x->status, 0, top + 1, task_id);
  }
  lua_getfield(L, body, "msg");
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_getfield(L, body, "message");
  }
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    kie_response_redacted(L, c, s, n);
    lua_remove(L, -2);
    msg_idx = lua_gettop(L);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, body, "code");
  if (!lua_isnumber(L, -1)) {
    lua_pop(L, 1);
    if (ok2xx) {
      lua_settop(L, top);
      return protocol_error(L, c, x, "envelope has no numeric code", task_id);
    }
    return api_error(L, c, x, x->status, 0, msg_idx, task_id);
  }
  {
    /* a code that is no whole number in int range (2e21, 200.5, 1e400) is never
     * success and converting it to long would be undefined */
    lua_Number n = lua_tonumber(L, -1);
    code = (n >= -2147483648.0 && n <= 2147483647.0 && n == (lua_Number)(long)n) ? (long)n : -1;
  }
  lua_pop(L, 1);
  if (code != 200) return api_error(L, c, x, code, 1, msg_idx, task_id);
  if (!ok2xx) return api_error(L, c, x, x->status, 0, msg_idx, task_id); /* body says fine */
  lua_getfield(L, body, "success"); /* the upload host's envelope */
  if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    kie_response_error(L, c, "http", "", 0);
    lua_pushfstring(L, "%s: success is false", op_name(x->op));
    if (msg_idx) {
      lua_pushliteral(L, ": ");
      lua_pushvalue(L, msg_idx);
      lua_concat(L, 3);
    }
    lua_setfield(L, -2, "message");
    set_int(L, "code", code);
    decorate(L, x, task_id);
    return 2;
  }
  lua_pop(L, 1);
  lua_getfield(L, body, "data");
  switch (x->op) {
  case KIE_OP_CREATE:
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_getfield(L, -1, "taskId");
      if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) > 0) {
        lua_pop(L, 1);
        break;
      }
    }
    lua_settop(L, top);
    return protocol_error(L, c, x, "createTask data has no taskId", task_id);
  case KIE_OP_GET:
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_settop(L, top);
      return protocol_error(L, c, x, "recordInfo data is not an object", task_id);
    }
    if (!kie_response_decode_task(L, -1)) {
      lua_settop(L, top);
      return protocol_error(L, c, x, "resultJson is not valid JSON", task_id);
    }
    break;
  default:
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushboolean(L, 1);
    }
    break;
  }
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 1;
}

int kie_response_push_fetch(lua_State *L, kie_client *c, kie_xfer *x) {
  if (x->io_error) {
    char msg[160];
    snprintf(msg, sizeof(msg), "download: writing the file failed: %s", strerror(x->io_error));
    kie_response_error(L, c, "io", msg, 0);
    decorate(L, x, NULL);
    return 2;
  }
  if (x->result != CURLE_OK) return transport_error(L, c, x, NULL);
  if (x->status < 200 || x->status > 299) return api_error(L, c, x, x->status, 0, 0, NULL);
  lua_pushboolean(L, 1);
  lua_pushinteger(L, (lua_Integer)x->received);
  return 2;
}
