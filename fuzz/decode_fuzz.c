/* decode_fuzz.c - libFuzzer harness over kie.core's response decoding, no network.
 *
 * What it drives: the libcurl header and body callbacks of transfer.c (Retry-After
 * capture, the body cap), then kie_response_push / kie_response_push_fetch of
 * response.c (envelope, code vs HTTP status, msg/message, nested param/resultJson
 * decoding, error kinds, retryable, Retry-After seconds, key redaction), in an
 * embedded Lua 5.4 state with the core's cjson.safe bridge (json.c).
 *
 * transfer.c is #included so that its static callbacks (on_header, on_body) are
 * reachable; response.c and json.c are linked as they are.
 *
 * Input (text, so that seeds can be written by hand; see fuzz/corpus/decode/):
 *   line 1     "<op> <http status> <curl code>"  op: create | get | call | fetch
 *   lines      raw response header lines ("HTTP/1.1 429 ...", "Retry-After: 12"),
 *              up to the first empty line
 *   the rest   the response body
 * An input without a newline is all body (op get, status 200, curl code 0).
 *
 * Checked on every input (abort = finding): the call never raises; it returns either
 * one value (create: a table with a non-empty string taskId; get: a table with a
 * resultUrls table; call: non-nil) only for HTTP 2xx with curl code 0, or nil and an
 * error table with a known kind, a string message that never contains the API key,
 * a boolean retryable, integer status/code/curl_code and a retry_after >= 0 when set.
 */
#include "../src/transfer.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <lualib.h>

#define FUZZ_KEY "sk-FUZZ-7q3XkeyZ"
#define FUZZ_CAP 65536

static lua_State *L;
static kie_client client;
static CURL *easy; /* a never-used handle: kie_transfer_reached_server reads its info */

static const char *const kinds[] = {
  "validation", "auth", "credits", "not_found", "invalid", "rate_limited", "key_limit",
  "maintenance", "server", "generation_failed", "disabled", "http", "network", "timeout",
  "protocol", "too_large", "unknown_outcome", "io", NULL
};

static void die(const char *what) {
  fprintf(stderr, "decode_fuzz: invariant broken: %s\n", what);
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc; (void)argv;
  if (!kie_transfer_global_init()) die("curl_global_init");
  L = luaL_newstate();
  luaL_openlibs(L);
  kie_json_init(L); /* requires cjson.safe from the system's Lua 5.4 cpath */
  lua_settop(L, 0);
  memset(&client, 0, sizeof(client));
  client.api_key = strdup(FUZZ_KEY);
  client.max_response = FUZZ_CAP;
  easy = curl_easy_init();
  if (client.api_key == NULL || easy == NULL) die("setup");
  return 0;
}

/* The input split into its parts. */
typedef struct {
  kie_op op;
  long status;
  int curl_code;
  const char *headers; size_t hlen;
  const char *body; size_t blen;
} parsed;

static long num(const char **p, const char *end, long dflt) {
  long v = 0;
  int any = 0, neg = 0;
  while (*p < end && **p == ' ') (*p)++;
  if (*p < end && **p == '-') { neg = 1; (*p)++; }
  while (*p < end && **p >= '0' && **p <= '9' && v < 100000000) {
    v = v * 10 + (**p - '0');
    (*p)++;
    any = 1;
  }
  return any ? (neg ? -v : v) : dflt;
}

static void parse(const char *s, size_t n, parsed *o) {
  const char *end = s + n, *nl = memchr(s, '\n', n), *p = s, *h;
  memset(o, 0, sizeof(*o));
  o->op = KIE_OP_GET;
  o->status = 200;
  o->headers = s; /* hlen 0 */
  if (nl == NULL) { o->body = s; o->blen = n; return; }
  while (p < nl && *p == ' ') p++;
  if (nl - p >= 6 && memcmp(p, "create", 6) == 0) { o->op = KIE_OP_CREATE; p += 6; }
  else if (nl - p >= 3 && memcmp(p, "get", 3) == 0) { o->op = KIE_OP_GET; p += 3; }
  else if (nl - p >= 4 && memcmp(p, "call", 4) == 0) { o->op = KIE_OP_CALL; p += 4; }
  else if (nl - p >= 5 && memcmp(p, "fetch", 5) == 0) { o->op = KIE_OP_FETCH; p += 5; }
  o->status = num(&p, nl, 200);
  o->curl_code = (int)num(&p, nl, 0);
  h = nl + 1;
  /* headers up to an empty line */
  p = h;
  while (p < end) {
    const char *e = memchr(p, '\n', (size_t)(end - p));
    if (e == NULL) { p = end; break; }
    if (e == p || (e == p + 1 && *p == '\r')) { o->headers = h; o->hlen = (size_t)(p - h); p = e + 1; break; }
    p = e + 1;
  }
  if (o->headers == NULL) { o->headers = h; o->hlen = (size_t)(p - h); }
  o->body = p;
  o->blen = (size_t)(end - p);
}

static int known_kind(const char *k) {
  int i;
  for (i = 0; kinds[i]; i++) if (strcmp(kinds[i], k) == 0) return 1;
  return 0;
}

static void check_int_field(int err, const char *name) {
  lua_getfield(L, err, name);
  if (!lua_isnil(L, -1) && !lua_isinteger(L, -1)) die(name);
  lua_pop(L, 1);
}

/* Runs the decoder inside a protected call (it may raise on out-of-memory only). */
static int run_decode(lua_State *S) {
  kie_xfer *x = lua_touserdata(S, 1);
  lua_settop(S, 0);
  if (x->op == KIE_OP_FETCH) return kie_response_push_fetch(S, &client, x);
  return kie_response_push(S, &client, x);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  parsed in;
  kie_xfer x;
  const char *p, *end;
  int rc, nret, err;
  if (size == 0) data = (const uint8_t *)""; /* libFuzzer may pass NULL for the empty input */
  parse((const char *)data, size, &in);
  memset(&x, 0, sizeof(x));
  x.client = &client;
  x.easy = easy;
  x.op = in.op;
  x.cap = FUZZ_CAP;
  x.status = in.status;
  x.result = (CURLcode)(in.curl_code < 0 ? 0 : in.curl_code % 100);
  if (in.op == KIE_OP_GET) x.task_id = strdup("task_fuzz");
  /* the header callback sees each line with its CRLF, as libcurl hands them */
  p = in.headers;
  end = in.headers + in.hlen;
  while (p < end) {
    const char *e = memchr(p, '\n', (size_t)(end - p));
    size_t len = e ? (size_t)(e - p) + 1 : (size_t)(end - p);
    char *line = malloc(len + 1);
    if (line == NULL) die("oom");
    memcpy(line, p, len);
    if (on_header(line, 1, len, &x) != len) die("on_header must accept every line");
    free(line);
    p += len;
  }
  if (strnlen(x.retry_after, sizeof(x.retry_after)) >= sizeof(x.retry_after)) die("retry_after unterminated");
  /* the body callback, in chunks of at most 16 KiB as libcurl does */
  p = in.body;
  end = in.body + in.blen;
  while (p < end && x.result == CURLE_OK) {
    size_t len = (size_t)(end - p) > 16384 ? 16384 : (size_t)(end - p);
    if (on_body((char *)p, 1, len, &x) != len) {
      if (!x.too_large) die("on_body refused without too_large");
      x.result = CURLE_WRITE_ERROR;
    }
    p += len;
  }
  if (x.resp.len > FUZZ_CAP) die("body past the cap");

  lua_settop(L, 0);
  lua_pushcfunction(L, run_decode);
  lua_pushlightuserdata(L, &x);
  rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (rc != LUA_OK) die(lua_tostring(L, -1) ? lua_tostring(L, -1) : "decoder raised");
  nret = lua_gettop(L);
  if (nret == 1 || (nret == 2 && in.op == KIE_OP_FETCH && !lua_isnil(L, 1))) {
    if (x.result != CURLE_OK || x.status < 200 || x.status > 299) die("success without 2xx/curl ok");
    switch (in.op) {
    case KIE_OP_CREATE:
      if (!lua_istable(L, 1)) die("create result is not a table");
      lua_getfield(L, 1, "taskId");
      if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) die("create without taskId");
      break;
    case KIE_OP_GET:
      if (!lua_istable(L, 1)) die("get result is not a table");
      lua_getfield(L, 1, "resultUrls");
      if (!lua_istable(L, -1)) die("get result without resultUrls");
      break;
    case KIE_OP_FETCH:
      if (lua_toboolean(L, 1) != 1 || !lua_isinteger(L, 2)) die("fetch result shape");
      break;
    default:
      if (lua_isnil(L, 1)) die("call result is nil");
    }
  } else if (nret == 2) {
    const char *msg;
    if (!lua_isnil(L, 1) || !lua_istable(L, 2)) die("failure is not nil, table");
    err = 2;
    lua_getfield(L, err, "kind");
    if (lua_type(L, -1) != LUA_TSTRING || !known_kind(lua_tostring(L, -1))) die("unknown kind");
    lua_pop(L, 1);
    lua_getfield(L, err, "message");
    if (lua_type(L, -1) != LUA_TSTRING) die("message is not a string");
    msg = lua_tostring(L, -1);
    if (strstr(msg, FUZZ_KEY) != NULL) die("the API key leaked into message");
    lua_pop(L, 1);
    lua_getfield(L, err, "retryable");
    if (!lua_isboolean(L, -1)) die("retryable is not a boolean");
    lua_pop(L, 1);
    check_int_field(err, "status");
    check_int_field(err, "code");
    check_int_field(err, "curl_code");
    lua_getfield(L, err, "retry_after");
    if (!lua_isnil(L, -1) && !(lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0)) die("retry_after < 0");
    lua_pop(L, 1);
    lua_getfield(L, err, "op");
    if (lua_type(L, -1) != LUA_TSTRING) die("op missing");
    lua_pop(L, 1);
  } else {
    die("wrong number of results");
  }
  lua_settop(L, 0);
  kie_buf_free(&x.resp);
  kie_buf_free(&x.req);
  free(x.task_id);
  return 0;
}
