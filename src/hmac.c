/* hmac.c - HMAC-SHA256 (OpenSSL libcrypto) and a constant-time compare, for
 * verifying kie.ai callback signatures.
 *
 * Caveats:
 *  - Pure CPU, no I/O: safe in any nginx phase and from any coroutine.
 *  - The signature is standard Base64 of the 32-byte digest (44 characters).
 *  - equal() takes time that depends only on the lengths, never on where the
 *    inputs first differ (CRYPTO_memcmp).
 *
 * Lua-facing (stack effect):
 *  core.hmac_sha256_base64(key, message) -> base64             [-0, +1]
 *  core.equal(a, b) -> boolean                                 [-0, +1]
 */
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "kie.h"

/* core.hmac_sha256_base64(key, message) -> base64 string: [-0, +1]. */
static int core_hmac(lua_State *L) {
  size_t klen, mlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *msg = luaL_checklstring(L, 2, &mlen);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  int n;
  if (HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, digest, &dlen) == NULL) {
    return luaL_error(L, "kie.core: HMAC-SHA256 failed");
  }
  n = EVP_EncodeBlock(b64, digest, (int)dlen);
  lua_pushlstring(L, (const char *)b64, (size_t)n);
  return 1;
}

/* core.equal(a, b) -> boolean, in time independent of the contents: [-0, +1]. */
static int core_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen);
  const char *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
  return 1;
}

void kie_hmac_open(lua_State *L) {
  lua_pushcfunction(L, core_hmac);
  lua_setfield(L, -2, "hmac_sha256_base64");
  lua_pushcfunction(L, core_equal);
  lua_setfield(L, -2, "equal");
}
