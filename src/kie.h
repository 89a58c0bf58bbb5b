/* kie.h - private declarations shared by the C files of kie.core.
 *
 * Caveats:
 *  - Nothing here is exported: every function is hidden (KIE_HIDDEN) and only
 *    luaopen_kie_core is visible from the shared object.
 *  - buf.c, clock.c, events.c, retry_after.c and transfer.c make no Lua calls at
 *    all (they run inside libcurl's callbacks); everything that touches a
 *    lua_State lives in kie.c, client.c, upload.c, base64.c, journal.c, hmac.c,
 *    json.c and response.c.
 *  - Functions are named after their file: kie_client_* in client.c,
 *    kie_transfer_* in transfer.c, kie_response_* in response.c, and so on.
 */
#ifndef KIE_H
#define KIE_H

#include <stddef.h>
#include <stdio.h>
#include <poll.h>
#include <curl/curl.h>
#include "compat.h"

#if defined(__GNUC__)
#define KIE_HIDDEN __attribute__((visibility("hidden")))
#else
#define KIE_HIDDEN
#endif

#ifndef KIE_VERSION
#define KIE_VERSION "0.1.0"
#endif

#define KIE_CLIENT_MT "kie.core.Client"
#define KIE_DEFAULT_MAX_RESPONSE (8u * 1024u * 1024u)
#define KIE_IDLE_EASY 8
/* sockets kie_events_start follows for a new transfer (happy eyeballs opens two) */
#define KIE_STARTED 4
/* the longest timeout: one day (a longer or infinite one is clamped to it) */
#define KIE_MAX_MS 86400000L
/* URLs up to this size are built on the C stack (longer ones as Lua strings) */
#define KIE_URL_BUF 512

/* What a transfer is for: decides how its response is decoded and what is retryable. */
typedef enum { KIE_OP_CREATE = 0, KIE_OP_GET, KIE_OP_CALL, KIE_OP_FETCH, KIE_OP_UPLOAD } kie_op;

typedef struct kie_buf {
  char *data;
  size_t len, cap;
} kie_buf;

typedef struct kie_client kie_client;

/* One HTTP exchange. Filled by transfer.c; read by response.c once done. */
typedef struct kie_xfer {
  kie_client *client;
  CURL *easy;
  kie_op op;
  kie_buf req;              /* request body (owned copy) */
  kie_buf resp;             /* response body, capped at client->max_response */
  FILE *sink;               /* KIE_OP_FETCH: the body goes here (owned, closed on free) */
  char *sink_path;          /* async KIE_OP_FETCH: sink's path, removed if freed unfinished */
  curl_mime *mime;          /* KIE_OP_UPLOAD: the multipart form (owned, freed on free) */
  size_t received;          /* body bytes seen */
  size_t cap;               /* body size cap for this transfer */
  int io_error;             /* errno of a failed write to sink, 0 if none */
  unsigned long id;         /* handed to Lua for async use */
  int reported;             /* step() has handed out its id */
  char *task_id;            /* KIE_OP_GET: the id asked for (for errors) */
  int too_large;            /* the cap was hit */
  int done;                 /* curl reported completion */
  int detached;             /* off the live list (being finished): unknown to find/cancel */
  int attempts;             /* times libcurl was about to send it (on_prereq) */
  int resend_refused;       /* a create's resend by libcurl was aborted (on_prereq) */
  CURLcode result;
  long status;
  char retry_after[64];     /* raw Retry-After header value, "" if none */
  char errbuf[CURL_ERROR_SIZE];
  struct kie_xfer *prev, *next; /* the client's list of live transfers */
} kie_xfer;

struct kie_client {
  CURLM *multi;
  CURLSH *share;
  struct curl_slist *headers;   /* auth + json headers, built once */
  struct curl_slist *form_headers; /* auth headers without Content-Type (multipart) */
  struct curl_slist *get_headers;  /* auth + Accept: GETs, no body */
  char *api_key;
  char *base_url;               /* no trailing slash */
  char *upload_url;             /* no trailing slash, may be NULL */
  char *ca_file, *ca_path, *proxy, *user_agent;
  long timeout_ms, connect_timeout_ms;
  size_t max_response;
  kie_xfer *live;
  unsigned long next_id;
  CURL *idle[KIE_IDLE_EASY];
  int nidle;
  int closed;                   /* close() was called: every method raises */
  int freed;                    /* handles, transfers and strings released */
  int in_call;                  /* C methods running that may run Lua code (hiredis's
                                 * REDIS_IN_CALLBACK): a close() then waits for them */
  struct pollfd *watch;         /* the sockets libcurl asked us to watch (events.c) */
  struct pollfd *pfds;          /* poll()'s copy of watch, plus the wakeup pipe */
  int nwatch, capwatch;
  unsigned rr;                  /* where the next budgeted dispatch starts */
  int unread;                   /* the last dispatch left ready sockets for the next */
  int wake[2];                  /* wakeup pipe: read end polled, write end for wakeup() */
  CURL *starting;               /* the transfer kie_events_start is giving its first turn */
  curl_socket_t started[KIE_STARTED]; /* sockets libcurl opened for it meanwhile */
  int nstarted;
};

/* buf.c: append (0 on out of memory) and free */
KIE_HIDDEN int kie_buf_append(kie_buf *b, const char *p, size_t n);
KIE_HIDDEN void kie_buf_free(kie_buf *b);
KIE_HIDDEN void kie_buf_wipe(void *p, size_t n); /* a zeroing no compiler drops */

/* transfer.c: libcurl, no Lua */
KIE_HIDDEN int kie_transfer_global_init(void);
KIE_HIDDEN const char *kie_transfer_setup(kie_client *c);
KIE_HIDDEN void kie_transfer_teardown(kie_client *c);
/* prepare: a linked, configured transfer not yet added to the multi handle (the
 * caller may set more options, e.g. a form); launch adds it. Both free the
 * transfer on failure (leaving sink to the caller) and return NULL with *why.
 * timeout_ms > 0 shortens the client's request timeout for this transfer. */
KIE_HIDDEN kie_xfer *kie_transfer_prepare(kie_client *c, kie_op op, const char *url, FILE *sink,
                                      size_t cap, long timeout_ms, const char **why);
KIE_HIDDEN kie_xfer *kie_transfer_launch(kie_client *c, kie_xfer *x, const char **why);
KIE_HIDDEN kie_xfer *kie_transfer_start(kie_client *c, kie_op op, const char *method,
                                    const char *url, const char *body, size_t len,
                                    FILE *sink, size_t cap, long timeout_ms, const char **why);
KIE_HIDDEN void kie_transfer_wait(kie_client *c, kie_xfer *x);
/* Runs due timers and ready sockets; waits up to timeout_ms first unless target (or,
 * with no target, any unreported transfer) is done. budget_s >= 0 stops handing ready
 * sockets to libcurl once that many seconds have passed (one always is; < 0: no
 * budget). 0 if the multi handle failed. */
KIE_HIDDEN int kie_transfer_perform(kie_client *c, int timeout_ms, double budget_s,
                                  const kie_xfer *target);
KIE_HIDDEN kie_xfer *kie_transfer_find(kie_client *c, unsigned long id);
KIE_HIDDEN void kie_transfer_free(kie_client *c, kie_xfer *x);
/* Takes x off the client's live list (idempotent): find, cancel and close no longer
 * see it; the caller frees it with kie_transfer_free. */
KIE_HIDDEN void kie_transfer_detach(kie_client *c, kie_xfer *x);
KIE_HIDDEN int kie_transfer_reached_server(const kie_xfer *x);

/* retry_after.c: seconds a Retry-After value asks for (>= 0), -1 if it is not
 * delay-seconds nor an HTTP-date */
KIE_HIDDEN double kie_retry_after_seconds(const char *value);

/* clock.c: monotonic seconds; seconds (>= 0, not NaN) to ms in [0, KIE_MAX_MS] */
KIE_HIDDEN double kie_clock_now(void);
KIE_HIDDEN long kie_clock_ms(double s);

/* events.c: socket watch list, poll, wakeup pipe (no Lua) */
KIE_HIDDEN const char *kie_events_setup(kie_client *c);
KIE_HIDDEN void kie_events_teardown(kie_client *c);
KIE_HIDDEN void kie_events_wakeup(kie_client *c);
KIE_HIDDEN int kie_events_timers(kie_client *c, long *next_ms);
KIE_HIDDEN int kie_events_start(kie_client *c, CURL *e);
KIE_HIDDEN int kie_events_wait(kie_client *c, int wait_ms, long timer_ms, double budget_s);

/* json.c: the lua-cjson bridge */
KIE_HIDDEN void kie_json_init(lua_State *L);
KIE_HIDDEN int kie_json_encode(lua_State *L, int idx);
KIE_HIDDEN int kie_json_decode(lua_State *L, const char *s, size_t len);

/* response.c: envelope decoding and typed errors */
KIE_HIDDEN int kie_response_push(lua_State *L, kie_client *c, kie_xfer *x);
KIE_HIDDEN int kie_response_push_fetch(lua_State *L, kie_client *c, kie_xfer *x);
KIE_HIDDEN int kie_response_error(lua_State *L, kie_client *c, const char *kind, const char *message,
                              int retryable);
KIE_HIDDEN int kie_response_decode_task(lua_State *L, int idx);
KIE_HIDDEN void kie_response_redacted(lua_State *L, kie_client *c, const char *s, size_t len);

/* hmac.c: adds hmac_sha256_base64 and equal to the module table at -1 */
KIE_HIDDEN void kie_hmac_open(lua_State *L);

/* client.c */
KIE_HIDDEN void kie_client_open(lua_State *L);
KIE_HIDDEN int kie_client_new(lua_State *L);
KIE_HIDDEN kie_client *kie_client_check(lua_State *L, int idx);
KIE_HIDDEN int kie_client_settle(lua_State *L, kie_client *c, kie_xfer *x, int async);
KIE_HIDDEN void kie_client_enter(kie_client *c);
KIE_HIDDEN int kie_client_leave(lua_State *L, kie_client *c, int nret);

/* upload.c: the multipart stream upload (client methods); base64.c and journal.c:
 * add base64_encode and append_line to the module table at -1 */
KIE_HIDDEN int kie_upload_run(lua_State *L);
KIE_HIDDEN int kie_upload_start(lua_State *L);
KIE_HIDDEN void kie_base64_open(lua_State *L);
KIE_HIDDEN void kie_journal_open(lua_State *L);

#endif /* KIE_H */
