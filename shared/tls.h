/*
 * tls: the server TLS context with the Mozilla "intermediate" profile (TLS 1.2 + 1.3, AEAD
 * suites with forward secrecy, ALPN http/1.1, no compression, no renegotiation).
 *
 * The master builds the context while it validates a configuration (so a bad certificate is
 * refused at reload and the old generation keeps serving) and the workers it forks inherit it:
 * every worker of a generation shares one certificate and one session-ticket key.
 */
#ifndef AUTHD_TLS_H
#define AUTHD_TLS_H

#include <openssl/ssl.h>

/*
 * Loads `cert_file` (PEM chain) and `key_file`, checks they match. Returns a new context, or
 * NULL with a message in `err` ("cert.pem: no start line", ...).
 */
SSL_CTX *tls_context_new(const char *cert_file, const char *key_file, char *err, size_t errlen);

#endif
