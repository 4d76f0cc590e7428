/* LD_PRELOAD shim for wrk (as in benches/tls.sh): wrk keeps its SSL objects across
 * reconnects and so resumes the last TLS session on every new connection. Unless
 * TLS_SHIM_RESUME is set, the session is dropped before each handshake, so every connection
 * makes a full handshake. Either way the handshakes wrk completes are counted and printed to
 * stderr when wrk exits. Built with cc by compare.py into its temp dir. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern int SSL_in_before(const SSL *);
extern int SSL_set_session(SSL *, SSL_SESSION *);
extern int SSL_session_reused(const SSL *);
extern int SSL_version(const SSL *);
static unsigned long full, resumed, tls13;
static int keep;
__attribute__((constructor)) static void init(void) { keep = getenv("TLS_SHIM_RESUME") != NULL; }
__attribute__((destructor)) static void fini(void) {
  fprintf(stderr, "tls-shim: %lu full handshakes, %lu resumed, %lu TLSv1.3\n", full, resumed, tls13);
}
int SSL_connect(SSL *s) {
  static int (*real)(SSL *);
  if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
  if (!keep && SSL_in_before(s)) SSL_set_session(s, NULL);
  int r = real(s);
  if (r == 1) {
    if (SSL_version(s) == 0x0304) tls13++;
    if (SSL_session_reused(s)) resumed++;
    else full++;
  }
  return r;
}
