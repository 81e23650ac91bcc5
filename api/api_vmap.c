/*
 * api_vmap: a chained hash table of job id -> (version, tenant) (see api_vmap.h).
 *
 * Chained rather than open-addressed so a drop needs no tombstones; the bucket array
 * doubles when the entries outnumber it, under the write lock (the loop thread pays
 * for a growth once per doubling, readers wait for it like for any write).
 */
#include "api/api_vmap.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS_MIN 1024
#define ID_MAX 40 /* ids are 26 characters; longer ones are never jobs (not stored) */

typedef struct node {
	struct node *next;
	int64_t version;
	bool has_tenant;
	char id[ID_MAX + 1];
	char tenant[]; /* "" when !has_tenant */
} node_t;

struct api_vmap {
	pthread_rwlock_t lock;
	node_t **b;
	size_t nb; /* a power of two */
	size_t n;
};

static uint32_t hash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

int api_vmap_new(api_vmap_t **out, sd_error_t *e)
{
	api_vmap_t *m = calloc(1, sizeof(*m));
	if (m)
		m->b = calloc(BUCKETS_MIN, sizeof(*m->b));
	if (!m || !m->b) {
		free(m);
		return sd_err(e, SD_ENOMEM, "out of memory");
	}
	m->nb = BUCKETS_MIN;
	pthread_rwlock_init(&m->lock, NULL);
	*out = m;
	return 0;
}

static void free_all(api_vmap_t *m)
{
	for (size_t i = 0; i < m->nb; i++) {
		for (node_t *p = m->b[i], *nx; p; p = nx) {
			nx = p->next;
			free(p);
		}
		m->b[i] = NULL;
	}
	m->n = 0;
}

void api_vmap_free(api_vmap_t *m)
{
	if (!m)
		return;
	free_all(m);
	free(m->b);
	pthread_rwlock_destroy(&m->lock);
	free(m);
}

/* The link that points at id's node, or at the NULL ending its chain; lock held. */
static node_t **find(api_vmap_t *m, const char *id)
{
	node_t **pp = &m->b[hash(id) & (m->nb - 1)];
	while (*pp && strcmp((*pp)->id, id))
		pp = &(*pp)->next;
	return pp;
}

/* Unlinks and frees id's node, if any; write lock held. */
static void unlink_id(api_vmap_t *m, const char *id)
{
	node_t **pp = find(m, id);
	node_t *p = *pp;
	if (p) {
		*pp = p->next;
		free(p);
		m->n--;
	}
}

/* Doubles the buckets; write lock held. Out of memory, the table stays as it is
 * (longer chains, still correct). */
static void grow(api_vmap_t *m)
{
	size_t nb = m->nb * 2;
	node_t **b = calloc(nb, sizeof(*b));
	if (!b)
		return;
	for (size_t i = 0; i < m->nb; i++) {
		for (node_t *p = m->b[i], *nx; p; p = nx) {
			nx = p->next;
			size_t k = hash(p->id) & (nb - 1);
			p->next = b[k];
			b[k] = p;
		}
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
}

void api_vmap_set(api_vmap_t *m, const char *id, const char *tenant, int64_t version)
{
	size_t tl = tenant ? strlen(tenant) : 0;
	pthread_rwlock_wrlock(&m->lock);
	node_t *p = *find(m, id);
	/* A job keeps its tenant, so the node is reused unless the tenant's size differs. */
	bool same = p && p->has_tenant == (tenant != NULL) && strlen(p->tenant) == tl;
	if (p && !same) {
		unlink_id(m, id);
		p = NULL;
	}
	if (!p) {
		if (strlen(id) > ID_MAX || m->n >= API_VMAP_MAX ||
		    !(p = malloc(sizeof(*p) + tl + 1))) {
			pthread_rwlock_unlock(&m->lock);
			return;
		}
		memcpy(p->id, id, strlen(id) + 1);
		node_t **head = &m->b[hash(id) & (m->nb - 1)];
		p->next = *head;
		*head = p;
		if (++m->n > m->nb)
			grow(m);
	}
	p->version = version;
	p->has_tenant = tenant != NULL;
	memcpy(p->tenant, tenant ? tenant : "", tl + 1);
	pthread_rwlock_unlock(&m->lock);
}

void api_vmap_drop(api_vmap_t *m, const char *id)
{
	pthread_rwlock_wrlock(&m->lock);
	unlink_id(m, id);
	pthread_rwlock_unlock(&m->lock);
}

void api_vmap_clear(api_vmap_t *m)
{
	pthread_rwlock_wrlock(&m->lock);
	free_all(m);
	pthread_rwlock_unlock(&m->lock);
}

int api_vmap_get(api_vmap_t *m, const char *id, const char *tenant, int64_t *version)
{
	pthread_rwlock_rdlock(&m->lock);
	const node_t *p = *find(m, id);
	int rc = 0;
	if (p) {
		/* as the store's query: no caller tenant sees all; a tenant sees its own */
		rc = !tenant || (p->has_tenant && !strcmp(p->tenant, tenant)) ? 1 : -1;
		*version = p->version;
	}
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

size_t api_vmap_size(api_vmap_t *m)
{
	pthread_rwlock_rdlock(&m->lock);
	size_t n = m->n;
	pthread_rwlock_unlock(&m->lock);
	return n;
}
