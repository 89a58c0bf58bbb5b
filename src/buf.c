/* buf.c - a growable byte buffer (request and response bodies). No Lua here.
 *
 * Caveats:
 *  - The data is always NUL-terminated past len, so a body can be handed to code
 *    that wants a C string; len counts the bytes without that NUL.
 *  - Growth doubles from 1 KiB; a failed realloc leaves the buffer as it was.
 *  - No Lua here: it runs inside libcurl's write callback.
 *  - kie_buf_wipe zeroes through a volatile function pointer, so the wipe of a
 *    secret right before free() survives dead-store elimination.
 *
 * Lua-facing: none (no lua_State here).
 */
#include <stdlib.h>
#include <string.h>
#include "kie.h"

int kie_buf_append(kie_buf *b, const char *p, size_t n) {
  if (n == 0) return 1;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    char *d;
    while (cap < b->len + n + 1) cap *= 2;
    d = realloc(b->data, cap);
    if (d == NULL) return 0;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 1;
}

void kie_buf_free(kie_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* memset through a volatile pointer: a compiler may drop a plain memset of memory
 * that is freed right after (dead store), which would leave the key behind. */
static void *(*const volatile buf_memset)(void *, int, size_t) = memset;

void kie_buf_wipe(void *p, size_t n) {
  if (p != NULL && n > 0) buf_memset(p, 0, n);
}
