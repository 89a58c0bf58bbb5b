/* base64.c - standard Base64 (with padding) for the File Upload API's base64 form.
 *
 * Caveats:
 *  - Built in a luaL_Buffer, so an out-of-memory raise leaks nothing.
 *
 * Lua-facing (stack effect):
 *  core.base64_encode(bytes) -> string                         [-0, +1]
 */
#include "kie.h"

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* core.base64_encode(bytes) -> standard Base64 with padding; built in a
 * luaL_Buffer so that an out-of-memory raise leaks nothing: [-0, +1]. */
static int base64_encode(lua_State *L) {
  size_t n, i = 0;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  while (i < n) {
    char *p = luaL_prepbuffer(&b);
    size_t w = 0;
    while (w + 4 <= LUAL_BUFFERSIZE && i < n) {
      unsigned long v = (unsigned long)s[i] << 16;
      if (i + 1 < n) v |= (unsigned long)s[i + 1] << 8;
      if (i + 2 < n) v |= s[i + 2];
      p[w++] = B64[(v >> 18) & 63];
      p[w++] = B64[(v >> 12) & 63];
      p[w++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
      p[w++] = i + 2 < n ? B64[v & 63] : '=';
      i += 3;
    }
    luaL_addsize(&b, w);
  }
  luaL_pushresult(&b);
  return 1;
}

/* Adds base64_encode to the module table at -1: [-0, +0]. */
void kie_base64_open(lua_State *L) {
  lua_pushcfunction(L, base64_encode);
  lua_setfield(L, -2, "base64_encode");
}
