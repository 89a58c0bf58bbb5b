/* retry_after.c - the Retry-After header value, parsed as RFC 9110 (10.2.3) says
 * and nothing more. No Lua here.
 *
 * Caveats:
 *  - delay-seconds is 1*DIGIT: no sign, no fraction, no exponent, no hex, no
 *    "inf". More digits than fit say "as long as it can be": KIE_RETRY_AFTER_MAX.
 *  - An HTTP-date is one of the three forms a recipient must accept: IMF-fixdate
 *    ("Sun, 06 Nov 1994 08:49:37 GMT"), RFC 850 ("Sunday, 06-Nov-94 08:49:37
 *    GMT", the two-digit year within 50 years of now) and asctime ("Sun Nov  6
 *    08:49:37 1994"), always GMT; the day must exist in that month and year. The
 *    weekday is checked for spelling, not against the date.
 *  - The caller (transfer.c's header callback) trims surrounding whitespace.
 *
 * Lua-facing: none (no lua_State here).
 */
#include <string.h>
#include <time.h>
#include "kie.h"

#define KIE_RETRY_AFTER_MAX 2147483647.0

static const char *const wkday[] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
static const char *const weekday[] = { "Monday", "Tuesday", "Wednesday", "Thursday",
                                       "Friday", "Saturday", "Sunday" };
static const char *const month[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* Reads n digits at *p into *out and advances; 0 if they are not all digits. */
static int digits(const char **p, int n, int *out) {
  int v = 0;
  for (; n > 0; n--, (*p)++) {
    if (**p < '0' || **p > '9') return 0;
    v = v * 10 + (**p - '0');
  }
  *out = v;
  return 1;
}

/* Matches the literal s at *p and advances; 0 if it is not there. */
static int lit(const char **p, const char *s) {
  size_t n = strlen(s);
  if (strncmp(*p, s, n) != 0) return 0;
  *p += n;
  return 1;
}

/* Matches one of the n names at *p and advances; its index, or -1. */
static int name_of(const char **p, const char *const *names, int n) {
  int i;
  for (i = 0; i < n; i++) {
    if (lit(p, names[i])) return i;
  }
  return -1;
}

/* "HH:MM:SS" into *secs of the day; 0 if malformed or out of range. */
static int clock_of(const char **p, long *secs) {
  int h, m, s;
  if (!digits(p, 2, &h) || !lit(p, ":") || !digits(p, 2, &m) || !lit(p, ":") ||
      !digits(p, 2, &s) || h > 23 || m > 59 || s > 60) {
    return 0;
  }
  *secs = h * 3600L + m * 60L + s;
  return 1;
}

/* Days from 1970-01-01 to y-m-d (m 1..12) in the proleptic Gregorian calendar;
 * -1e9 if the day does not exist. */
static long days_of(int y, int m, int d) {
  static const int dim[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  long era, yoe, doy, doe;
  if (d < 1 || d > dim[m - 1] + (m == 2 && leap)) return -1000000000L;
  if (m <= 2) y--;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153L * ((m + 9) % 12) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097L + doe - 719468L;
}

/* Seconds since the epoch of an HTTP-date at v, or -1 if v is none. */
static double http_date(const char *v, time_t now) {
  const char *p = v;
  int d, m, y;
  long secs, days;
  if (name_of(&p, wkday, 7) >= 0 && lit(&p, ", ")) { /* IMF-fixdate */
    if (!digits(&p, 2, &d) || !lit(&p, " ") || (m = name_of(&p, month, 12)) < 0 ||
        !lit(&p, " ") || !digits(&p, 4, &y) || !lit(&p, " ") || !clock_of(&p, &secs) ||
        !lit(&p, " GMT") || *p != '\0') {
      return -1;
    }
  } else if (p = v, name_of(&p, weekday, 7) >= 0 && lit(&p, ", ")) { /* RFC 850 */
    struct tm tm;
    int cy;
    if (!digits(&p, 2, &d) || !lit(&p, "-") || (m = name_of(&p, month, 12)) < 0 ||
        !lit(&p, "-") || !digits(&p, 2, &y) || !lit(&p, " ") || !clock_of(&p, &secs) ||
        !lit(&p, " GMT") || *p != '\0') {
      return -1;
    }
    gmtime_r(&now, &tm);
    cy = tm.tm_year + 1900;
    y += cy - cy % 100;
    if (y > cy + 50) y -= 100;
  } else if (p = v, name_of(&p, wkday, 7) >= 0 && lit(&p, " ")) { /* asctime */
    if ((m = name_of(&p, month, 12)) < 0 || !lit(&p, " ")) return -1;
    if (*p == ' ') {
      p++;
      if (!digits(&p, 1, &d)) return -1;
    } else if (!digits(&p, 2, &d)) {
      return -1;
    }
    if (!lit(&p, " ") || !clock_of(&p, &secs) || !lit(&p, " ") || !digits(&p, 4, &y) ||
        *p != '\0') {
      return -1;
    }
  } else {
    return -1;
  }
  days = days_of(y, m + 1, d);
  if (days < -100000000L) return -1;
  return (double)days * 86400.0 + (double)secs;
}

double kie_retry_after_seconds(const char *v) {
  const char *p = v;
  double s = 0;
  time_t now;
  if (v == NULL || *v == '\0') return -1;
  while (*p >= '0' && *p <= '9') {
    if (s < KIE_RETRY_AFTER_MAX) s = s * 10 + (*p - '0');
    p++;
  }
  if (*p == '\0') return s > KIE_RETRY_AFTER_MAX ? KIE_RETRY_AFTER_MAX : s;
  if (p != v) return -1; /* digits then something else */
  now = time(NULL);
  s = http_date(v, now);
  if (s < 0) return -1;
  s -= (double)now;
  return s < 0 ? 0 : s;
}
