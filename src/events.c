/* events.c - drives a client's libcurl multi handle with the socket API. No Lua here.
 *
 * Caveats:
 *  - libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION); we poll()
 *    them ourselves and hand each ready one to curl_multi_socket_action, so a step
 *    costs O(ready sockets), not O(transfers) as curl_multi_perform does. Timers are
 *    read with curl_multi_timeout before and after each poll (no TIMERFUNCTION).
 *  - A budget bounds one step's work: its clock starts when poll() returns (the
 *    wait is not work). Once its deadline has passed no further ready socket
 *    is handed to libcurl (at least one always is). The rest stay readable and are
 *    served first by the next step (round robin over the watch list), so none starves;
 *    until then poll_timeout() is 0, so that a host loop does not sleep on them.
 *  - wakeup() writes to a non-blocking pipe that every poll also watches; it may be
 *    called from another thread. The pipe is drained by the next poll.
 *  - The budget bounds socket reads only: libcurl's due timers (a transfer that was
 *    just added, a timeout) always run, and a timer may finish more than one.
 *  - The socket callback may run while we dispatch (any curl_multi_socket_action
 *    also runs libcurl's due timers, e.g. happy eyeballs opening a second socket):
 *    dispatch walks a copy of the watch list (the pollfd array), never the list
 *    itself, and re-reads that copy by index after every libcurl call, since the
 *    callback may realloc it. A socket poll() reports as invalid is dropped from
 *    the list after libcurl has seen the error.
 *  - kie_events_start gives a new transfer its first turn at the call: due timers
 *    (it connects, or writes on a kept-alive connection), then up to three rounds
 *    of poll(0) over the sockets opened for it (a loopback connect is done at once),
 *    so that its request goes out before the call returns whenever no wait is
 *    needed. It never waits and serves no other transfer's socket.
 *  - poll() over the list: right for the tens to hundreds of transfers a client has;
 *    thousands would want epoll.
 *
 * Lua-facing: none (no lua_State here).
 */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include "kie.h"

/* Index of fd in the watch list, or -1. */
static int find_watch(const kie_client *c, curl_socket_t fd) {
  int i;
  for (i = 0; i < c->nwatch; i++) {
    if (c->watch[i].fd == fd) return i;
  }
  return -1;
}

/* CURLMOPT_SOCKETFUNCTION: keep the watch list in step with what libcurl asks for. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
  kie_client *c = ud;
  int i = find_watch(c, fd);
  short ev = 0;
  (void)sockp;
  if (what == CURL_POLL_REMOVE) {
    if (i >= 0) c->watch[i] = c->watch[--c->nwatch];
    return 0;
  }
  if (e == c->starting && c->nstarted < KIE_STARTED) c->started[c->nstarted++] = fd;
  if (what & CURL_POLL_IN) ev |= POLLIN;
  if (what & CURL_POLL_OUT) ev |= POLLOUT;
  if (i < 0) {
    if (c->nwatch == c->capwatch) {
      int cap = 2 * c->capwatch;
      struct pollfd *w = realloc(c->watch, (size_t)(cap + 1) * sizeof(*w));
      struct pollfd *p = realloc(c->pfds, (size_t)(cap + 1) * sizeof(*p));
      if (w) c->watch = w;
      if (p) c->pfds = p;
      if (w == NULL || p == NULL) return -1;
      c->capwatch = cap;
    }
    i = c->nwatch++;
    c->watch[i].fd = fd;
    c->watch[i].revents = 0;
  }
  c->watch[i].events = ev;
  return 0;
}

/* Room for this many sockets (plus the wakeup pipe) from the start; doubled as needed. */
#define KIE_WATCH_START 16

const char *kie_events_setup(kie_client *c) {
  int i;
  c->wake[0] = c->wake[1] = -1;
  c->watch = malloc((KIE_WATCH_START + 1) * sizeof(*c->watch));
  c->pfds = malloc((KIE_WATCH_START + 1) * sizeof(*c->pfds));
  if (c->watch == NULL || c->pfds == NULL) return "out of memory";
  c->capwatch = KIE_WATCH_START;
  if (pipe(c->wake) != 0) return "cannot create the wakeup pipe";
  for (i = 0; i < 2; i++) {
    fcntl(c->wake[i], F_SETFL, fcntl(c->wake[i], F_GETFL) | O_NONBLOCK);
    fcntl(c->wake[i], F_SETFD, FD_CLOEXEC);
  }
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  return NULL;
}

void kie_events_teardown(kie_client *c) {
  int i;
  for (i = 0; i < 2; i++) {
    if (c->wake[i] >= 0) close(c->wake[i]);
    c->wake[i] = -1;
  }
  free(c->watch);
  free(c->pfds);
  c->watch = c->pfds = NULL;
  c->nwatch = c->capwatch = 0;
}

void kie_events_wakeup(kie_client *c) {
  char b = 1;
  if (c->wake[1] >= 0) (void)!write(c->wake[1], &b, 1);
}

/* Runs libcurl's due timers (new transfers start this way). With next_ms, stores the
 * ms until libcurl's next timer afterwards (-1: none). */
int kie_events_timers(kie_client *c, long *next_ms) {
  long ms = -1;
  int running;
  if (curl_multi_timeout(c->multi, &ms) != CURLM_OK) return 0;
  if (ms == 0) {
    if (curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running) != CURLM_OK) return 0;
    if (next_ms != NULL && curl_multi_timeout(c->multi, &ms) != CURLM_OK) return 0;
  }
  if (next_ms != NULL) *next_ms = ms;
  return 1;
}

int kie_events_start(kie_client *c, CURL *e) {
  int round, k, n, running;
  c->starting = e;
  c->nstarted = 0;
  if (!kie_events_timers(c, NULL)) {
    c->starting = NULL;
    return 0;
  }
  c->starting = NULL;
  /* a few turns: connected -> request written -> waiting for the answer */
  for (round = 0; round < 3; round++) {
    struct pollfd p[KIE_STARTED];
    int fired = 0;
    for (k = n = 0; k < c->nstarted; k++) {
      int i = find_watch(c, c->started[k]);
      if (i < 0) continue;
      p[n] = c->watch[i];
      p[n++].revents = 0;
    }
    if (n == 0 || poll(p, (nfds_t)n, 0) <= 0) break;
    for (k = 0; k < n; k++) {
      int ev = 0;
      if (p[k].revents & (POLLIN | POLLHUP)) ev |= CURL_CSELECT_IN;
      if (p[k].revents & POLLOUT) ev |= CURL_CSELECT_OUT;
      if (p[k].revents & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
      if (!ev) continue;
      fired = 1;
      if (curl_multi_socket_action(c->multi, p[k].fd, ev, &running) != CURLM_OK) return 0;
    }
    if (!fired) break;
  }
  return 1;
}

/* Waits at most wait_ms, and no longer than libcurl's next timer (timer_ms, -1:
 * none), for the watched sockets (or a wakeup), then hands the ready ones to
 * libcurl until budget_s (< 0: none) has passed since the wait ended. */
int kie_events_wait(kie_client *c, int wait_ms, long timer_ms, double budget_s) {
  int n = c->nwatch, k, ready, running, start;
  double deadline;
  if (timer_ms >= 0 && timer_ms < wait_ms) wait_ms = (int)timer_ms;
  if (n > 0) memcpy(c->pfds, c->watch, (size_t)n * sizeof(*c->pfds));
  c->pfds[n].fd = c->wake[0];
  c->pfds[n].events = POLLIN;
  ready = poll(c->pfds, (nfds_t)n + 1, wait_ms);
  if (ready < 0) return errno == EINTR;
  deadline = budget_s >= 0 ? kie_clock_now() + budget_s : 0; /* the wait is not work */
  if (ready > 0 && c->pfds[n].revents) {
    char buf[64];
    while (read(c->wake[0], buf, sizeof(buf)) > 0) {}
    ready--;
  }
  start = n > 0 ? c->rr % n : 0;
  c->unread = 0;
  for (k = 0; k < n && ready > 0; k++) {
    /* copied out, never a pointer: the socket callback may realloc pfds during
     * curl_multi_socket_action (a timer opening a socket); re-indexed each turn */
    curl_socket_t fd = c->pfds[(start + k) % n].fd;
    short rev = c->pfds[(start + k) % n].revents;
    int ev = 0;
    if (!rev) continue;
    ready--;
    if (rev & (POLLIN | POLLHUP)) ev |= CURL_CSELECT_IN;
    if (rev & POLLOUT) ev |= CURL_CSELECT_OUT;
    if (rev & (POLLERR | POLLNVAL)) ev |= CURL_CSELECT_ERR;
    if (curl_multi_socket_action(c->multi, fd, ev, &running) != CURLM_OK) return 0;
    if (rev & POLLNVAL) { /* closed behind libcurl's back: stop polling it */
      int i = find_watch(c, fd);
      if (i >= 0) c->watch[i] = c->watch[--c->nwatch];
    }
    if (deadline > 0 && ready > 0 && kie_clock_now() >= deadline) {
      c->rr = (unsigned)(start + k + 1); /* the next step begins after the last one served */
      c->unread = 1;                     /* and a host loop must not sleep before it */
      break;
    }
  }
  return 1;
}
