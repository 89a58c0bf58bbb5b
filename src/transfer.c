/* transfer.c - HTTP exchanges on the client's libcurl multi handle. No Lua here.
 *
 * Caveats:
 *  - No Lua API call may happen in this file: libcurl callbacks only append to C
 *    buffers (with a size cap) or copy a header into a fixed array, so a Lua error
 *    can never unwind through libcurl frames.
 *  - Connections live in the multi handle's cache, DNS and TLS sessions in a share
 *    handle, and easy handles are recycled without curl_easy_reset: the options that
 *    never change (TLS verification, protocols, share, callbacks) are set once when
 *    a handle is made, and every request sets all the others (URL, headers, method,
 *    body, cap, timeout, callback data), so nothing leaks from one request to the
 *    next. Sequential calls reuse one TCP connection and one TLS session.
 *  - No Accept-Encoding: the API's answers are small JSON and downloads are images
 *    (already compressed); decoding cost more CPU than it saved on the wire.
 *  - libcurl resends a request, unasked, when a reused connection dies before the
 *    answer starts, and a resent create is paid twice. Every request of a create
 *    passes on_prereq (CURLOPT_PREREQFUNCTION, libcurl >= 7.80), which lets its first
 *    attempt go and aborts any later one (x->resend_refused), so a create reuses
 *    kept-alive connections like every other call and is still sent at most once.
 *    Older libcurl: a create opens a fresh connection (CURLOPT_FRESH_CONNECT), on
 *    which that retry never happens.
 *  - TLS verification is always on; redirects are never followed (the key would
 *    travel with them); only http and https are allowed.
 *  - The key's copies in C are the client's api_key, the three header lists and the
 *    transient buffer they are built from: all are zeroed before they are freed.
 *    libcurl's own request buffers (each request's header block) are freed by
 *    libcurl unwiped; that is out of our reach.
 *  - Four header lists: JSON calls carry auth + JSON headers, GETs auth + Accept
 *    only, multipart uploads (KIE_OP_UPLOAD) auth + Accept + Expect (libcurl
 *    writes Content-Type with the boundary), downloads (KIE_OP_FETCH) none at
 *    all, so a file host never sees the key.
 *  - kie_transfer_prepare/kie_transfer_launch split kie_transfer_start for callers that set
 *    more options in between (upload.c's form); on failure both free the transfer
 *    but leave its sink to the caller, who opened it.
 *  - curl_global_init is not thread-safe before 7.84; kie_transfer_global_init is guarded by
 *    a pthread once so several lua_States in several threads may load the module.
 *
 * Lua-facing: none (no lua_State here).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <strings.h>
#include <errno.h>
#include "kie.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init_once(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int kie_transfer_global_init(void) {
  pthread_once(&global_once, global_init_once);
  return global_rc == CURLE_OK;
}

/* CURLOPT_PREREQFUNCTION came with 7.80 (KIE_NO_PREREQ builds the fallback) */
#if LIBCURL_VERSION_NUM >= 0x075000 && !defined(KIE_NO_PREREQ)
#define KIE_HAVE_PREREQ 1
#endif

/* libcurl write callback: append to the response buffer, refuse past the cap. */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
  kie_xfer *x = ud;
  size_t n = size * nmemb;
  if (x->received + n > x->cap) {
    x->too_large = 1;
    return 0;
  }
  x->received += n;
  if (x->sink != NULL) {
    if (fwrite(ptr, 1, n, x->sink) == n) return n;
    x->io_error = errno ? errno : EIO;
    return 0;
  }
  return kie_buf_append(&x->resp, ptr, n) ? n : 0;
}

#ifdef KIE_HAVE_PREREQ
/* libcurl pre-request callback: a create's second attempt is libcurl resending it
 * on a new connection after a reused one died; refuse it (the first may have been
 * received). Other calls go as often as libcurl likes. */
static int on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
  kie_xfer *x = ud;
  (void)ip; (void)local_ip; (void)port; (void)local_port;
  if (x->op != KIE_OP_CREATE || x->attempts++ == 0) return CURL_PREREQFUNC_OK;
  x->resend_refused = 1;
  return CURL_PREREQFUNC_ABORT;
}
#endif

/* libcurl header callback: keep Retry-After (of the last response) only. */
static size_t on_header(char *ptr, size_t size, size_t nitems, void *ud) {
  kie_xfer *x = ud;
  size_t n = size * nitems;
  static const char name[] = "retry-after:";
  if (n > sizeof(name) - 1 && strncasecmp(ptr, name, sizeof(name) - 1) == 0) {
    const char *v = ptr + sizeof(name) - 1;
    const char *end = ptr + n;
    size_t len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    len = (size_t)(end - v);
    if (len >= sizeof(x->retry_after)) len = sizeof(x->retry_after) - 1;
    memcpy(x->retry_after, v, len);
    x->retry_after[len] = '\0';
  } else if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) {
    x->retry_after[0] = '\0'; /* a new response (after 100-continue) starts */
  }
  return n;
}

static void share_lock(CURL *h, curl_lock_data d, curl_lock_access a, void *u) {
  (void)h; (void)d; (void)a; (void)u; /* one client is used by one thread at a time */
}

/* Frees a header list after zeroing its strings: they hold the key. */
static void free_list(struct curl_slist *l) {
  struct curl_slist *h;
  for (h = l; h != NULL; h = h->next) {
    if (h->data != NULL) kie_buf_wipe(h->data, strlen(h->data));
  }
  curl_slist_free_all(l);
}

const char *kie_transfer_setup(kie_client *c) {
  struct curl_slist *h = NULL, *t;
  const char *why;
  char *auth;
  size_t n;
  if (!kie_transfer_global_init()) return "curl_global_init failed";
  c->multi = curl_multi_init();
  c->share = curl_share_init();
  if (c->multi == NULL || c->share == NULL) return "out of memory creating libcurl handles";
  curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, share_lock);
  curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 128L);
  if ((why = kie_events_setup(c)) != NULL) return why;
  n = strlen(c->api_key) + sizeof("Authorization: Bearer ");
  auth = malloc(n);
  if (auth == NULL) return "out of memory";
  snprintf(auth, n, "Authorization: Bearer %s", c->api_key);
  t = curl_slist_append(h, auth);
  kie_buf_wipe(auth, n);
  free(auth);
  if (t == NULL) return "out of memory";
  h = t;
  if ((t = curl_slist_append(h, "Accept: application/json")) == NULL) goto oom;
  h = t;
  if ((t = curl_slist_append(h, "Expect:")) == NULL) goto oom;
  h = t;
  /* multipart uploads: the same headers without Content-Type (libcurl sets the
   * multipart one with its boundary) */
  c->form_headers = h;
  t = NULL;
  for (; h != NULL; h = h->next) {
    struct curl_slist *u = curl_slist_append(t, h->data);
    if (u == NULL) { free_list(t); return "out of memory"; }
    t = u;
  }
  c->headers = t;
  if ((t = curl_slist_append(c->headers, "Content-Type: application/json")) == NULL) {
    return "out of memory";
  }
  c->headers = t;
  /* GETs: the key and Accept only (no body, so no Content-Type and no Expect) */
  t = NULL;
  for (h = c->form_headers; h != NULL; h = h->next) {
    struct curl_slist *u;
    if (strncmp(h->data, "Expect:", 7) == 0) continue;
    if ((u = curl_slist_append(t, h->data)) == NULL) { free_list(t); return "out of memory"; }
    t = u;
  }
  c->get_headers = t;
  return NULL;
oom:
  free_list(h);
  return "out of memory";
}

void kie_transfer_teardown(kie_client *c) {
  int i;
  while (c->live != NULL) kie_transfer_free(c, c->live);
  for (i = 0; i < c->nidle; i++) curl_easy_cleanup(c->idle[i]);
  c->nidle = 0;
  if (c->multi) curl_multi_cleanup(c->multi);
  if (c->share) curl_share_cleanup(c->share);
  kie_events_teardown(c);
  free_list(c->headers);
  free_list(c->form_headers);
  free_list(c->get_headers);
  c->get_headers = NULL;
  c->multi = NULL;
  c->share = NULL;
  c->headers = NULL;
  c->form_headers = NULL;
}

/* Options that never change for a client: set once, when the easy handle is made. */
static int set_fixed(kie_client *c, CURL *e) {
  int bad = 0;
  bad |= curl_easy_setopt(e, CURLOPT_SHARE, c->share) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075500
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
  bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) != CURLE_OK;
#endif
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
  if (c->ca_file) bad |= curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file) != CURLE_OK;
  if (c->ca_path) bad |= curl_easy_setopt(e, CURLOPT_CAPATH, c->ca_path) != CURLE_OK;
  if (c->proxy) bad |= curl_easy_setopt(e, CURLOPT_PROXY, c->proxy) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK;
#ifdef KIE_HAVE_PREREQ
  bad |= curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) != CURLE_OK;
#endif
  return !bad;
}

/* A recycled handle keeps its options (no curl_easy_reset): set_request overwrites
 * every option a request may change. A new handle gets the fixed ones first. */
static CURL *take_easy(kie_client *c) {
  CURL *e;
  if (c->nidle > 0) return c->idle[--c->nidle];
  e = curl_easy_init();
  if (e != NULL && !set_fixed(c, e)) {
    curl_easy_cleanup(e);
    e = NULL;
  }
  return e;
}

static void give_easy(kie_client *c, CURL *e) {
  if (c->nidle < KIE_IDLE_EASY && !c->closed) {
    /* no pointer into the freed transfer stays in an idle handle */
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, (char *)NULL);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)NULL);
    c->idle[c->nidle++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

/* Per-request options, all of them on every request so that nothing of a previous
 * request on a recycled handle (an upload's form, headers or timeout, a download's
 * missing headers, a POST body) carries over. The method is set by kie_transfer_start
 * (or the form by upload.c); here it is a GET with no body. */
static int set_request(kie_client *c, kie_xfer *x, const char *url, long timeout_ms) {
  CURL *e = x->easy;
  struct curl_slist *h = NULL;
  int bad = 0;
  bad |= curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK;
  /* a download goes to a file host: it never carries the key */
  if (x->op == KIE_OP_UPLOAD) h = c->form_headers;
  else if (x->op != KIE_OP_FETCH) h = c->headers;
  bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, h) != CURLE_OK;
  /* a request's own timeout may only shorten the client's, except a download's,
   * which replaces it (a file may take longer than an API call) */
  bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                          (timeout_ms > 0 && (timeout_ms < c->timeout_ms || x->op == KIE_OP_FETCH))
                              ? timeout_ms : c->timeout_ms) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->cap) != CURLE_OK;
  /* libcurl silently resends a request whose reused connection died before any
   * answer byte: a create is never let through twice (on_prereq), or, without
   * that callback, never goes out on a connection it could resend on */
#ifdef KIE_HAVE_PREREQ
  bad |= curl_easy_setopt(e, CURLOPT_PREREQDATA, x) != CURLE_OK;
#else
  bad |= curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, x->op == KIE_OP_CREATE ? 1L : 0L) != CURLE_OK;
#endif
  bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, x) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, x) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, x) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL) != CURLE_OK;
  /* POSTFIELDS first: it switches the method to POST, HTTPGET switches it back
   * (and clears CURLOPT_UPLOAD / NOBODY) */
  bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, (char *)NULL) != CURLE_OK;
  bad |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK;
  return !bad;
}

/* Frees a transfer that failed to start; its sink stays the caller's to close. */
static void drop(kie_client *c, kie_xfer *x) {
  x->sink = NULL;
  kie_transfer_free(c, x);
}

kie_xfer *kie_transfer_prepare(kie_client *c, kie_op op, const char *url, FILE *sink, size_t cap,
                           long timeout_ms, const char **why) {
  kie_xfer *x = calloc(1, sizeof(*x));
  if (x == NULL) { *why = "out of memory"; return NULL; }
  x->client = c;
  x->op = op;
  x->cap = cap ? cap : c->max_response;
  x->sink = sink;
  x->id = ++c->next_id;
  x->easy = take_easy(c);
  if (x->easy == NULL) { free(x); *why = "out of memory"; return NULL; }
  /* linked first so that kie_transfer_free cleans up on every path below */
  x->next = c->live;
  if (c->live) c->live->prev = x;
  c->live = x;
  if (!set_request(c, x, url, timeout_ms)) {
    *why = "libcurl refused an option";
    drop(c, x);
    return NULL;
  }
  return x;
}

kie_xfer *kie_transfer_launch(kie_client *c, kie_xfer *x, const char **why) {
  if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK) {
    *why = "libcurl refused the transfer";
    drop(c, x);
    return NULL;
  }
  /* start it now (connect and send, or send on a kept-alive connection): the
   * caller pays for its own request, and a budgeted step only reads answers */
  kie_events_start(c, x->easy);
  return x;
}

kie_xfer *kie_transfer_start(kie_client *c, kie_op op, const char *method, const char *url,
                         const char *body, size_t len, FILE *sink, size_t cap,
                         long timeout_ms, const char **why) {
  kie_xfer *x = kie_transfer_prepare(c, op, url, sink, cap, timeout_ms, why);
  if (x == NULL) return NULL;
  if (body != NULL) {
    if (!kie_buf_append(&x->req, body, len) && len > 0) { *why = "out of memory"; goto fail; }
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->req.data ? x->req.data : "");
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  if (strcmp(method, "POST") == 0 && body == NULL) {
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  } else if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) {
    curl_easy_setopt(x->easy, CURLOPT_CUSTOMREQUEST, method);
  } else if (body == NULL && op != KIE_OP_FETCH) {
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, c->get_headers);
  }
  return kie_transfer_launch(c, x, why);
fail:
  drop(c, x);
  return NULL;
}

/* Marks every finished transfer of the multi handle as done. */
static void collect(kie_client *c) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE) {
      kie_xfer *x = NULL;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
      if (x != NULL) {
        x->done = 1;
        x->result = m->data.result;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
      }
    }
  }
}

/* True when the caller has something to pick up: target done, or (no target) any
 * finished transfer that step() has not handed out yet. */
static int ready(kie_client *c, const kie_xfer *target) {
  const kie_xfer *x;
  if (target != NULL) return target->done;
  for (x = c->live; x != NULL; x = x->next) {
    if (x->done && !x->reported) return 1;
  }
  return 0;
}

int kie_transfer_perform(kie_client *c, int timeout_ms, double budget_s, const kie_xfer *target) {
  int wait_ms;
  long timer_ms;
  if (!kie_events_timers(c, &timer_ms)) return 0;
  collect(c);
  wait_ms = (timeout_ms > 0 && !ready(c, target)) ? timeout_ms : 0;
  if (!kie_events_wait(c, wait_ms, timer_ms, budget_s) || !kie_events_timers(c, NULL)) return 0;
  collect(c);
  return 1;
}

void kie_transfer_wait(kie_client *c, kie_xfer *x) {
  while (!x->done) {
    if (!kie_transfer_perform(c, 1000, -1, x)) break;
  }
  if (!x->done) { /* the multi handle failed: report as a transport failure */
    x->done = 1;
    x->result = CURLE_FAILED_INIT;
  }
}

kie_xfer *kie_transfer_find(kie_client *c, unsigned long id) {
  kie_xfer *x;
  for (x = c->live; x != NULL; x = x->next) {
    if (x->id == id) return x;
  }
  return NULL;
}

int kie_transfer_reached_server(const kie_xfer *x) {
  curl_off_t pre = 0;
  long req = 0;
  if (x->resend_refused) return 1; /* its first attempt went out on a reused connection */
  switch (x->result) {
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_CONNECT:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_FAILED_INIT:
    return 0;
  default:
    break;
  }
  /* a timeout before the request went out (connect phase) never reached the server */
  curl_easy_getinfo(x->easy, CURLINFO_PRETRANSFER_TIME_T, &pre);
  curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &req);
  return !(pre == 0 && req == 0);
}

void kie_transfer_detach(kie_client *c, kie_xfer *x) {
  if (x->detached) return;
  if (x->prev) x->prev->next = x->next;
  else c->live = x->next;
  if (x->next) x->next->prev = x->prev;
  x->prev = x->next = NULL;
  x->detached = 1;
}

void kie_transfer_free(kie_client *c, kie_xfer *x) {
  kie_transfer_detach(c, x);
  if (x->easy) {
    if (c->multi) curl_multi_remove_handle(c->multi, x->easy);
    if (x->mime != NULL) {
      /* unbind the form from the easy handle before freeing it */
      curl_easy_setopt(x->easy, CURLOPT_MIMEPOST, (curl_mime *)NULL);
      curl_mime_free(x->mime);
      x->mime = NULL;
    }
    give_easy(c, x->easy);
  }
  if (x->mime != NULL) curl_mime_free(x->mime);
  if (x->sink != NULL) fclose(x->sink);
  if (x->sink_path != NULL) {
    remove(x->sink_path);
    free(x->sink_path);
  }
  kie_buf_free(&x->req);
  kie_buf_free(&x->resp);
  free(x->task_id);
  free(x);
}
