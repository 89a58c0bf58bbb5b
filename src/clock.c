/* clock.c - the monotonic clock and the seconds-to-milliseconds conversion every
 * timeout goes through. No Lua here.
 *
 * Caveats:
 *  - kie_clock_now is CLOCK_MONOTONIC: never jumps with the wall clock.
 *  - kie_clock_ms takes seconds already checked to be >= 0 and not NaN (callers
 *    raise otherwise) and clamps instead of converting out of range: a float to
 *    integer conversion of math.huge or 1e19 is undefined in C.
 *
 * Lua-facing: none (no lua_State here).
 */
#include <time.h>
#include "kie.h"

double kie_clock_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long kie_clock_ms(double s) {
  double ms = s * 1000;
  if (!(ms > 0)) return 0;
  if (ms < 1) return 1;
  if (ms > KIE_MAX_MS) return KIE_MAX_MS;
  return (long)ms;
}
