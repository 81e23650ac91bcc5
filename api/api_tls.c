/*
 * api_tls: HTTPS for the API. The certificate chain and key libmicrohttpd serves, read
 * from tls_cert / tls_key, and read again on SIGHUP (see api_int.h, api.h).
 *
 * Why a callback. libmicrohttpd takes a certificate only when a daemon starts
 * (MHD_OPTION_HTTPS_MEM_CERT) and has no option to swap it on a running one. Starting
 * a second MHD daemon on the same listening socket and stopping the first would cut
 * every open connection (uploads streaming, long-polls held), and both daemons would
 * need their own share of api_t's state. Instead libmicrohttpd gets a GnuTLS
 * certificate callback (MHD_OPTION_HTTPS_CERT_CALLBACK2): every TLS handshake asks for
 * the pair in service, so a reload applies from the next handshake on, and
 * connections already open keep the certificate they negotiated.
 *
 * Ownership. The PEM bytes of the pair in service live here behind a read-write lock
 * (handshakes read in parallel; a reload swaps them under the write lock). Each
 * handshake imports its own copy of the chain and key and hands it to GnuTLS with
 * GNUTLS_CERT_RETR_DEINIT_ALL, so GnuTLS frees it with the session: a reload never
 * frees anything a live session still uses, and nothing accumulates across reloads.
 * The import is a PEM parse of a few kilobytes per handshake, beside the handshake's
 * own public-key operations.
 *
 * Checks. At start and at each reload the pair is imported exactly as a handshake
 * would, the chain must be in order (leaf first) and the key must belong to the
 * leaf; any failure keeps the pair in service (a reload is all or nothing) and names
 * the file and the cause. An expired or not-yet-valid leaf is served but logged.
 *
 * libmicrohttpd's certificate callback carries no user pointer, so the pair is a
 * process singleton (the_tls): one HTTPS server per process, which sparsityd is.
 */
#include "api/api_int.h"

#include <errno.h>
#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/sd_log.h"
#include "common/sd_time.h"

/* A certificate chain or key file larger than this is not one. */
#define PEM_MAX (1 << 20)
/* Certificates in a chain: a leaf and its intermediates. */
#define CHAIN_MAX 16

static struct tls {
	pthread_rwlock_t lock;
	bool on;
	gnutls_datum_t cert, key; /* PEM bytes in service; lock */
	char cert_path[1024], key_path[1024];
} the_tls = {.lock = PTHREAD_RWLOCK_INITIALIZER};

/* Reads a whole PEM file into d (gnutls_malloc'd; the caller frees it with pem_free). */
static int read_pem(const char *what, const char *path, gnutls_datum_t *d, sd_error_t *e)
{
	memset(d, 0, sizeof(*d));
	FILE *f = fopen(path, "rb");
	if (!f)
		return sd_err(e, SD_EUSAGE, "%s %s: %s", what, path, strerror(errno));
	struct stat st;
	int rc = 0;
	if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode))
		rc = sd_err(e, SD_EUSAGE, "%s %s: not a regular file", what, path);
	else if (st.st_size <= 0 || st.st_size > PEM_MAX)
		rc = sd_err(e, SD_EUSAGE, "%s %s: %lld bytes is not a PEM file (1 byte .. 1 MiB)", what,
			    path, (long long)st.st_size);
	else if (!(d->data = gnutls_malloc((size_t)st.st_size + 1)))
		rc = sd_err(e, SD_ENOMEM, "out of memory reading %s", path);
	else if (fread(d->data, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
		rc = sd_err(e, SD_EUSAGE, "%s %s: read failed", what, path);
	fclose(f);
	if (rc) {
		gnutls_free(d->data);
		d->data = NULL;
		return rc;
	}
	d->size = (unsigned)st.st_size;
	d->data[d->size] = 0;
	return 0;
}

/* Frees PEM bytes, wiping them first: the key's are a secret. */
static void pem_free(gnutls_datum_t *d)
{
	if (d->data)
		gnutls_memset(d->data, 0, d->size);
	gnutls_free(d->data);
	memset(d, 0, sizeof(*d));
}

static void chain_free(gnutls_pcert_st *certs, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		gnutls_pcert_deinit(&certs[i]);
	gnutls_free(certs);
}

/*
 * Imports a PEM chain and key. On success the caller owns *certs (*n of them, an array
 * from gnutls_malloc) and *key, as GnuTLS's GNUTLS_CERT_RETR_DEINIT_ALL expects.
 */
static int import_pair(const gnutls_datum_t *cert, const gnutls_datum_t *key,
		       gnutls_pcert_st **certs, unsigned *n, gnutls_privkey_t *pkey, sd_error_t *e)
{
	*certs = gnutls_malloc(CHAIN_MAX * sizeof(**certs));
	*n = CHAIN_MAX;
	*pkey = NULL;
	if (!*certs)
		return sd_err(e, SD_ENOMEM, "out of memory importing the certificate");
	int g = gnutls_pcert_list_import_x509_raw(*certs, n, cert, GNUTLS_X509_FMT_PEM,
						  GNUTLS_X509_CRT_LIST_FAIL_IF_UNSORTED);
	if (g < 0) {
		gnutls_free(*certs);
		*certs = NULL;
		*n = 0;
		return sd_err(e, SD_EUSAGE, "tls_cert %s: %s (a PEM chain, leaf first, at most %d)",
			      the_tls.cert_path, gnutls_strerror(g), CHAIN_MAX);
	}
	if ((g = gnutls_privkey_init(pkey)) < 0 ||
	    (g = gnutls_privkey_import_x509_raw(*pkey, key, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
		chain_free(*certs, *n);
		gnutls_privkey_deinit(*pkey);
		*certs = NULL;
		*n = 0;
		*pkey = NULL;
		return sd_err(e, SD_EUSAGE, "tls_key %s: %s (an unencrypted PEM private key)",
			      the_tls.key_path, gnutls_strerror(g));
	}
	return 0;
}

/* Whether key is the private key of the leaf's public key (same key id). */
static bool key_matches(gnutls_pcert_st *leaf, gnutls_privkey_t key)
{
	unsigned char a[64], b[64];
	size_t la = sizeof(a), lb = sizeof(b);
	gnutls_pubkey_t pub;
	if (gnutls_pubkey_init(&pub) < 0)
		return false;
	bool ok = gnutls_pubkey_import_privkey(pub, key, 0, 0) >= 0 &&
		  gnutls_pubkey_get_key_id(pub, 0, a, &la) >= 0 &&
		  gnutls_pubkey_get_key_id(leaf->pubkey, 0, b, &lb) >= 0 && la == lb &&
		  !memcmp(a, b, la);
	gnutls_pubkey_deinit(pub);
	return ok;
}

/* One line about the leaf for the log: its subject and validity, with a warning when
 * it is not valid now. */
static void describe_leaf(gnutls_pcert_st *leaf, char *out, size_t cap, bool *valid_now)
{
	*valid_now = true;
	snprintf(out, cap, "(unreadable subject)");
	gnutls_x509_crt_t crt;
	if (gnutls_x509_crt_init(&crt) < 0)
		return;
	if (gnutls_x509_crt_import(crt, &leaf->cert, GNUTLS_X509_FMT_DER) >= 0) {
		char dn[256];
		size_t dl = sizeof(dn);
		if (gnutls_x509_crt_get_dn(crt, dn, &dl) < 0)
			snprintf(dn, sizeof(dn), "(no subject)");
		time_t from = gnutls_x509_crt_get_activation_time(crt);
		time_t until = gnutls_x509_crt_get_expiration_time(crt);
		char sf[SD_TIME_ISO_MAX], su[SD_TIME_ISO_MAX];
		sd_time_iso((int64_t)from * 1000, sf);
		sd_time_iso((int64_t)until * 1000, su);
		time_t now = time(NULL);
		*valid_now = now >= from && now <= until;
		snprintf(out, cap, "'%s', valid %s .. %s", dn, sf, su);
	}
	gnutls_x509_crt_deinit(crt);
}

/* Reads and checks the pair at the configured paths; on success *cert and *key hold
 * its PEM bytes (caller owns them) and the leaf is logged. */
static int load(gnutls_datum_t *cert, gnutls_datum_t *key, const char *why, sd_error_t *e)
{
	int rc = read_pem("tls_cert", the_tls.cert_path, cert, e);
	if (!rc && (rc = read_pem("tls_key", the_tls.key_path, key, e)))
		pem_free(cert);
	if (rc)
		return rc;
	gnutls_pcert_st *certs;
	unsigned n;
	gnutls_privkey_t pkey;
	if (!(rc = import_pair(cert, key, &certs, &n, &pkey, e))) {
		if (n == 0)
			rc = sd_err(e, SD_EUSAGE, "tls_cert %s holds no certificate", the_tls.cert_path);
		else if (!key_matches(&certs[0], pkey))
			rc = sd_err(e, SD_EUSAGE,
				    "tls_key %s is not the key of the first certificate in tls_cert %s",
				    the_tls.key_path, the_tls.cert_path);
		if (!rc) {
			char leaf[512];
			bool valid;
			describe_leaf(&certs[0], leaf, sizeof(leaf), &valid);
			if (valid)
				log_info("api", "TLS certificate %s: %s, %u in chain", why, leaf, n);
			else
				log_error("api", "TLS certificate %s: %s, %u in chain: NOT VALID NOW, "
					  "clients will refuse it", why, leaf, n);
		}
		chain_free(certs, n);
		gnutls_privkey_deinit(pkey);
	}
	if (rc) {
		pem_free(cert);
		pem_free(key);
	}
	return rc;
}

/* GnuTLS asks for the server's certificate (HTTP thread, during a handshake). */
static int retrieve(gnutls_session_t session, const struct gnutls_cert_retr_st *info,
		    gnutls_pcert_st **certs, unsigned int *n, gnutls_ocsp_data_st **ocsp,
		    unsigned int *n_ocsp, gnutls_privkey_t *pkey, unsigned int *flags)
{
	(void)session, (void)info;
	*ocsp = NULL;
	*n_ocsp = 0;
	sd_error_t e;
	pthread_rwlock_rdlock(&the_tls.lock);
	int rc = import_pair(&the_tls.cert, &the_tls.key, certs, n, pkey, &e);
	pthread_rwlock_unlock(&the_tls.lock);
	if (rc) {
		log_error("api", "TLS handshake refused: %s", e.msg);
		return -1;
	}
	*flags = GNUTLS_CERT_RETR_DEINIT_ALL;
	return 0;
}

gnutls_certificate_retrieve_function3 *api__tls_start(const char *cert, const char *key,
						      sd_error_t *e)
{
	if (!MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK2)) {
		sd_err(e, SD_EUSAGE, "this libmicrohttpd has no TLS certificate callback (needs "
				     "0.9.71 or later built with GnuTLS)");
		return NULL;
	}
	snprintf(the_tls.cert_path, sizeof(the_tls.cert_path), "%s", cert);
	snprintf(the_tls.key_path, sizeof(the_tls.key_path), "%s", key);
	if (load(&the_tls.cert, &the_tls.key, "loaded", e))
		return NULL;
	the_tls.on = true;
	return retrieve;
}

void api__tls_stop(void)
{
	pthread_rwlock_wrlock(&the_tls.lock);
	pem_free(&the_tls.cert);
	pem_free(&the_tls.key);
	the_tls.on = false;
	pthread_rwlock_unlock(&the_tls.lock);
}

int api_tls_reload(sd_error_t *e)
{
	if (!the_tls.on)
		return 0;
	gnutls_datum_t cert, key;
	int rc = load(&cert, &key, "reloaded", e);
	if (rc)
		return rc;
	pthread_rwlock_wrlock(&the_tls.lock);
	gnutls_datum_t old_cert = the_tls.cert, old_key = the_tls.key;
	the_tls.cert = cert;
	the_tls.key = key;
	pthread_rwlock_unlock(&the_tls.lock);
	pem_free(&old_cert);
	pem_free(&old_key);
	return 0;
}
