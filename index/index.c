/* index — LMDB environment, record encoding, queue, commit journal, block
 * digests, origins and running totals. */
#include "index.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Virtual size of the map: entries are ~300 bytes, so this holds tens of
 * millions of files; the file itself only grows as it fills. */
#define IDX_MAP_SIZE (16ull << 30)

/* Named databases an environment has. */
#define IDX_MAX_DBS 10

struct idx {
	MDB_env *env;
	MDB_dbi entries, blocks, origins, totals, queue, journal, meta;
};

struct idx_txn {
	struct idx *idx;
	MDB_txn *txn;
	int write;
};

/* Translate an LMDB return code to -errno, logging what LMDB said. */
static int mdb_err(int rc, const char *what)
{
	if (rc == 0)
		return 0;
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	log_msg(LOG_ERR, "index: %s: %s", what, mdb_strerror(rc));
	if (rc == MDB_MAP_FULL)
		return -ENOSPC;
	if (rc > 0)
		return -rc;
	return -EIO;
}

/* Keys are big-endian so cursor order is numeric order. */
static void ino_key(uint64_t ino, unsigned char buf[8], MDB_val *k)
{
	for (int i = 7; i >= 0; i--, ino >>= 8)
		buf[i] = (unsigned char)ino;
	k->mv_size = 8;
	k->mv_data = buf;
}

/* The big-endian inode number at p. */
static uint64_t key_ino_at(const void *p)
{
	const unsigned char *b = p;
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

static uint64_t key_ino(const MDB_val *k)
{
	return k->mv_size == 8 ? key_ino_at(k->mv_data) : 0;
}

/* ---- record encoding ----------------------------------------------------
 *
 * An entry is: magic byte ENTRY_MAGIC, then every field of struct idx_entry
 * in declaration order, integers little-endian (doubles as their IEEE-754
 * bits), digests as 32 bytes, the suffix as 8 bytes, the reason as a length
 * byte and that many bytes. Version 1 indexes stored the C struct itself
 * (256 bytes on x86-64): upgrade() converts them.
 */
#define ENTRY_MAGIC 0xE2

struct wr {
	uint8_t *p;
	size_t n;
};

static void wr_u64(struct wr *w, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		w->p[w->n++] = (uint8_t)(v >> (8 * i));
}

static void wr_u32(struct wr *w, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		w->p[w->n++] = (uint8_t)(v >> (8 * i));
}

static void wr_f64(struct wr *w, double d)
{
	uint64_t v;

	memcpy(&v, &d, sizeof(v));
	wr_u64(w, v);
}

static void wr_bytes(struct wr *w, const void *b, size_t n)
{
	memcpy(w->p + w->n, b, n);
	w->n += n;
}

struct rd {
	const uint8_t *p;
	size_t n, len;
	int bad;
};

/* n more bytes, or NULL (and bad set) when the record is short. */
static const uint8_t *rd_take(struct rd *r, size_t n)
{
	const uint8_t *at;

	if (r->bad || r->len - r->n < n) {
		r->bad = 1;
		return NULL;
	}
	at = r->p + r->n;
	r->n += n;
	return at;
}

static uint64_t rd_u64(struct rd *r)
{
	const uint8_t *b = rd_take(r, 8);
	uint64_t v = 0;

	for (int i = 7; b && i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static uint32_t rd_u32(struct rd *r)
{
	const uint8_t *b = rd_take(r, 4);
	uint32_t v = 0;

	for (int i = 3; b && i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static double rd_f64(struct rd *r)
{
	uint64_t v = rd_u64(r);
	double d;

	memcpy(&d, &v, sizeof(d));
	return d;
}

static void rd_bytes(struct rd *r, void *out, size_t n)
{
	const uint8_t *b = rd_take(r, n);

	if (b)
		memcpy(out, b, n);
}

size_t idx_entry_encode(const struct idx_entry *e, uint8_t *buf)
{
	struct wr w = {buf, 0};
	size_t rl = strnlen(e->reason, sizeof(e->reason) - 1);

	buf[w.n++] = ENTRY_MAGIC;
	wr_u32(&w, e->state);
	wr_u32(&w, e->kind);
	wr_u32(&w, e->flags);
	wr_u32(&w, e->carries);
	wr_u32(&w, e->quality);
	wr_u64(&w, e->gen);
	wr_u64(&w, e->orig_bytes);
	wr_u64(&w, e->stored_bytes);
	wr_u64(&w, e->view_bytes);
	wr_u64(&w, e->done);
	wr_u64(&w, e->total);
	wr_u64(&w, e->prev);
	wr_u64(&w, (uint64_t)e->updated);
	wr_u64(&w, (uint64_t)e->started);
	wr_u64(&w, (uint64_t)e->checked);
	wr_f64(&w, e->elapsed);
	wr_f64(&w, e->ssim);
	wr_f64(&w, e->view_ssim);
	wr_f64(&w, e->fps);
	wr_bytes(&w, e->sum, SUM_LEN);
	wr_bytes(&w, e->orig_sum, SUM_LEN);
	wr_bytes(&w, e->view_sum, SUM_LEN);
	wr_bytes(&w, e->scan_sum, SUM_LEN);
	wr_bytes(&w, e->head_sum, SUM_LEN);
	wr_bytes(&w, e->suffix, sizeof(e->suffix));
	buf[w.n++] = (uint8_t)rl;
	wr_bytes(&w, e->reason, rl);
	return w.n;
}

int idx_entry_decode(const uint8_t *buf, size_t len, struct idx_entry *e)
{
	struct rd r = {buf, 0, len, 0};
	const uint8_t *magic = rd_take(&r, 1), *rl;

	memset(e, 0, sizeof(*e));
	if (!magic || *magic != ENTRY_MAGIC)
		return -EPROTO;
	e->state = rd_u32(&r);
	e->kind = rd_u32(&r);
	e->flags = rd_u32(&r);
	e->carries = rd_u32(&r);
	e->quality = rd_u32(&r);
	e->gen = rd_u64(&r);
	e->orig_bytes = rd_u64(&r);
	e->stored_bytes = rd_u64(&r);
	e->view_bytes = rd_u64(&r);
	e->done = rd_u64(&r);
	e->total = rd_u64(&r);
	e->prev = rd_u64(&r);
	e->updated = (int64_t)rd_u64(&r);
	e->started = (int64_t)rd_u64(&r);
	e->checked = (int64_t)rd_u64(&r);
	e->elapsed = rd_f64(&r);
	e->ssim = rd_f64(&r);
	e->view_ssim = rd_f64(&r);
	e->fps = rd_f64(&r);
	rd_bytes(&r, e->sum, SUM_LEN);
	rd_bytes(&r, e->orig_sum, SUM_LEN);
	rd_bytes(&r, e->view_sum, SUM_LEN);
	rd_bytes(&r, e->scan_sum, SUM_LEN);
	rd_bytes(&r, e->head_sum, SUM_LEN);
	rd_bytes(&r, e->suffix, sizeof(e->suffix));
	rl = rd_take(&r, 1);
	if (rl && *rl < sizeof(e->reason))
		rd_bytes(&r, e->reason, *rl);
	else
		r.bad = 1;
	if (r.bad || r.n != len || e->state >= IDX_NSTATES || e->kind >= IDX_NKINDS) {
		memset(e, 0, sizeof(*e));
		return -EPROTO;
	}
	e->suffix[sizeof(e->suffix) - 1] = '\0';
	return 0;
}

/* ---- running totals ------------------------------------------------------
 *
 * "totals" holds, under keys "s" + state byte + kind byte, the count, bytes
 * original and bytes stored of the entries in that state and of that kind;
 * "d" and "u" count damaged and at-rest-but-unsummed entries; "r" + reason
 * group the kept files per reason. Each value is three little-endian u64.
 */

/* Add sign * (one file of e) to the counter at key. */
static int total_add(struct idx_txn *txn, const void *key, size_t klen, const struct idx_entry *e,
		     int sign)
{
	MDB_val k = {.mv_size = klen, .mv_data = (void *)key}, v;
	uint64_t c[3] = {0, 0, 0};
	uint8_t buf[24];
	struct wr w = {buf, 0};
	int rc = mdb_get(txn->txn, txn->idx->totals, &k, &v);

	if (rc == 0 && v.mv_size == sizeof(buf)) {
		struct rd r = {v.mv_data, 0, v.mv_size, 0};
		for (int i = 0; i < 3; i++)
			c[i] = rd_u64(&r);
	} else if (rc && rc != MDB_NOTFOUND) {
		return mdb_err(rc, "totals get");
	}
	c[0] += (uint64_t)(int64_t)sign;
	c[1] += (uint64_t)(int64_t)sign * e->orig_bytes;
	c[2] += (uint64_t)(int64_t)sign * e->stored_bytes;
	if (c[0] == 0) {
		rc = mdb_del(txn->txn, txn->idx->totals, &k, NULL);
		return rc == MDB_NOTFOUND ? 0 : mdb_err(rc, "totals del");
	}
	for (int i = 0; i < 3; i++)
		wr_u64(&w, c[i]);
	v.mv_size = sizeof(buf);
	v.mv_data = buf;
	return mdb_err(mdb_put(txn->txn, txn->idx->totals, &k, &v, 0), "totals put");
}

/* Is e at rest (its bytes no longer change) without a checksum? */
static int unsummed(const struct idx_entry *e)
{
	return (e->state == IDX_ARCHIVED || e->state == IDX_KEPT) && sum_is_zero(e->sum);
}

/* Count e in (sign 1) or out of (sign -1) every total it belongs to. */
static int totals_apply(struct idx_txn *txn, const struct idx_entry *e, int sign)
{
	uint8_t key[2 + 160];
	int rc;

	if (e->flags & IDX_F_PREV)
		return 0; /* kept aside, not a file of the tree */
	key[0] = 's';
	key[1] = (uint8_t)e->state;
	key[2] = (uint8_t)e->kind;
	if ((rc = total_add(txn, key, 3, e, sign)))
		return rc;
	if ((e->flags & IDX_F_DAMAGED) && (rc = total_add(txn, "d", 1, e, sign)))
		return rc;
	if (unsummed(e) && (rc = total_add(txn, "u", 1, e, sign)))
		return rc;
	if (e->state == IDX_KEPT) {
		key[0] = 'r';
		idx_reason_group(e->reason, (char *)key + 1, sizeof(key) - 1);
		if ((rc = total_add(txn, key, 1 + strlen((char *)key + 1), e, sign)))
			return rc;
	}
	return 0;
}

/* Decode a counter's value into c (zeros when malformed). */
static void total_get(const MDB_val *v, struct idx_count *c)
{
	struct rd r = {v->mv_data, 0, v->mv_size, 0};

	c->files = rd_u64(&r);
	c->bytes_original = rd_u64(&r);
	c->bytes_stored = rd_u64(&r);
	if (r.bad)
		memset(c, 0, sizeof(*c));
}

void idx_reason_group(const char *reason, char *buf, size_t size)
{
	size_t n = strcspn(reason, "(:");

	while (n > 0 && reason[n - 1] == ' ')
		n--;
	if (n >= size)
		n = size - 1;
	memcpy(buf, reason, n);
	buf[n] = '\0';
}

/* ---- the environment ---------------------------------------------------- */

/* The version-1 record: struct idx_entry as it was laid out then. */
struct entry_v1 {
	uint32_t state, quality;
	uint64_t gen, orig_bytes, stored_bytes, view_bytes, done, total;
	int64_t updated;
	double ssim, view_ssim, fps;
	char suffix[8];
	char reason[160];
};

/* Upgrade a version-1 environment to this version in txn: every entry and
 * intent re-encoded, totals counted. Kinds are guessed from the suffix
 * (archived) and left unknown otherwise; checksums are learnt by the first
 * scrub. */
static int upgrade(struct idx *idx, MDB_txn *mtxn)
{
	struct idx_txn txn = {idx, mtxn, 1};
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	rc = mdb_cursor_open(mtxn, idx->entries, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct entry_v1 o;
		struct idx_entry e = {0};
		uint8_t buf[IDX_ENTRY_MAX];
		MDB_val nv;

		if (v.mv_size != sizeof(o))
			continue;
		memcpy(&o, v.mv_data, sizeof(o));
		e.state = o.state < IDX_NSTATES ? o.state : IDX_STAGED;
		e.quality = o.quality;
		e.gen = o.gen;
		e.orig_bytes = o.orig_bytes;
		e.stored_bytes = o.stored_bytes;
		e.view_bytes = o.view_bytes;
		e.updated = o.updated;
		e.ssim = o.ssim;
		e.view_ssim = o.view_ssim;
		memcpy(e.suffix, o.suffix, sizeof(e.suffix));
		e.suffix[sizeof(e.suffix) - 1] = '\0';
		memcpy(e.reason, o.reason, sizeof(e.reason));
		e.reason[sizeof(e.reason) - 1] = '\0';
		if (e.state == IDX_ARCHIVED)
			e.kind = !strcmp(e.suffix, ".heic") ? IDX_KIND_PHOTO : IDX_KIND_VIDEO;
		nv.mv_size = idx_entry_encode(&e, buf);
		nv.mv_data = buf;
		if ((rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT)))
			break;
		if ((rc = totals_apply(&txn, &e, 1)))
			break;
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND)
		return rc < 0 ? rc : mdb_err(rc, "upgrade");
	/* a version-1 journal record is the old entry inside: recovery of an
	 * intent that old rolls it back, which is always safe */
	rc = mdb_drop(mtxn, idx->journal, 0);
	if (rc)
		return mdb_err(rc, "upgrade journal");
	log_msg(LOG_INFO,
		"index: upgraded to version %d (checksums of files archived before "
		"are recorded by the first `hevcfs verify`)",
		IDX_SCHEMA_VERSION);
	return 0;
}

/* Open the named databases and check or write the schema version. */
static int idx_setup(struct idx *idx, int read_only)
{
	MDB_txn *txn;
	unsigned flags = read_only ? 0 : MDB_CREATE;
	uint32_t ver = 0;
	int rc, fresh = 0;

	rc = mdb_txn_begin(idx->env, NULL, read_only ? MDB_RDONLY : 0, &txn);
	if (rc)
		return mdb_err(rc, "begin");
	if ((rc = mdb_dbi_open(txn, "entries", flags, &idx->entries)) ||
	    (rc = mdb_dbi_open(txn, "queue", flags, &idx->queue)) ||
	    (rc = mdb_dbi_open(txn, "journal", flags, &idx->journal)) ||
	    (rc = mdb_dbi_open(txn, "meta", flags, &idx->meta))) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? -ENOENT : mdb_err(rc, "open databases");
	}
	MDB_val k = {.mv_size = 6, .mv_data = "schema"}, v;
	rc = mdb_get(txn, idx->meta, &k, &v);
	if (rc == MDB_NOTFOUND) {
		fresh = 1;
		ver = IDX_SCHEMA_VERSION;
	} else if (rc == 0 && v.mv_size == sizeof(ver)) {
		memcpy(&ver, v.mv_data, sizeof(ver));
	} else {
		mdb_txn_abort(txn);
		return rc ? mdb_err(rc, "schema") : -EPROTO;
	}
	if (ver > IDX_SCHEMA_VERSION || ver < 1 || (ver < IDX_SCHEMA_VERSION && read_only)) {
		log_msg(LOG_ERR, "index: schema version %u, this hevcfs reads %u%s", ver,
			IDX_SCHEMA_VERSION,
			ver < IDX_SCHEMA_VERSION ? " (mount it, or run hevcfs fsck, to upgrade it)"
						 : "");
		mdb_txn_abort(txn);
		return -EPROTO;
	}
	if ((rc = mdb_dbi_open(txn, "blocks", flags, &idx->blocks)) ||
	    (rc = mdb_dbi_open(txn, "origins", flags, &idx->origins)) ||
	    (rc = mdb_dbi_open(txn, "totals", flags, &idx->totals))) {
		mdb_txn_abort(txn);
		return rc == MDB_NOTFOUND ? -ENOENT : mdb_err(rc, "open databases");
	}
	/* a committed transaction (read-only too) keeps the handles open */
	if (read_only)
		return mdb_err(mdb_txn_commit(txn), "commit");
	if (!fresh && ver < IDX_SCHEMA_VERSION && (rc = upgrade(idx, txn))) {
		mdb_txn_abort(txn);
		return rc < 0 ? rc : mdb_err(rc, "upgrade");
	}
	if (fresh || ver < IDX_SCHEMA_VERSION) {
		ver = IDX_SCHEMA_VERSION;
		v.mv_size = sizeof(ver);
		v.mv_data = &ver;
		rc = mdb_put(txn, idx->meta, &k, &v, 0);
		if (rc) {
			mdb_txn_abort(txn);
			return mdb_err(rc, "schema");
		}
	}
	return mdb_err(mdb_txn_commit(txn), "commit");
}

int idx_open(const char *dir, int read_only, struct idx **out)
{
	struct idx *idx = calloc(1, sizeof(*idx));
	unsigned flags = MDB_NOTLS | MDB_NOSYNC | (read_only ? MDB_RDONLY : 0);
	int rc;

	if (!idx)
		return -ENOMEM;
	if (!read_only && mkdir(dir, 0700) == -1 && errno != EEXIST) {
		rc = -errno;
		goto out_free;
	}
	rc = mdb_err(mdb_env_create(&idx->env), "create");
	if (rc)
		goto out_free;
	mdb_env_set_maxdbs(idx->env, IDX_MAX_DBS);
	mdb_env_set_mapsize(idx->env, IDX_MAP_SIZE);
	mdb_env_set_maxreaders(idx->env, 1022);
	rc = mdb_env_open(idx->env, dir, flags, 0600);
	if (rc) {
		rc = rc == ENOENT ? -ENOENT : mdb_err(rc, dir);
		goto out_env;
	}
	rc = idx_setup(idx, read_only);
	if (rc)
		goto out_env;
	*out = idx;
	return 0;

out_env:
	mdb_env_close(idx->env);
out_free:
	free(idx);
	return rc;
}

/* LMDB's files in an environment's directory. */
static const char *const env_files[] = {"data.mdb", "lock.mdb"};

/* dir with ".old" appended (malloc'd). */
static char *aside_name(const char *dir)
{
	size_t n = strlen(dir);
	char *p = malloc(n + sizeof(".old"));

	if (p) {
		memcpy(p, dir, n);
		memcpy(p + n, ".old", sizeof(".old"));
	}
	return p;
}

void idx_remove_aside(const char *dir)
{
	char *old = aside_name(dir);
	int fd;

	if (!old)
		return;
	fd = open(old, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		for (size_t i = 0; i < sizeof(env_files) / sizeof(*env_files); i++)
			unlinkat(fd, env_files[i], 0);
		close(fd);
		rmdir(old);
	}
	free(old);
}

int idx_set_aside(const char *dir)
{
	char *old = aside_name(dir);
	int rc = 0;

	if (!old)
		return -ENOMEM;
	idx_remove_aside(dir); /* a leftover of an interrupted rebuild */
	if (rename(dir, old) == -1 && errno != ENOENT)
		rc = -errno;
	free(old);
	return rc;
}

void idx_close(struct idx *idx)
{
	if (!idx)
		return;
	mdb_env_sync(idx->env, 1);
	mdb_env_close(idx->env);
	free(idx);
}

int idx_sync(struct idx *idx)
{
	return mdb_err(mdb_env_sync(idx->env, 1), "sync");
}

int idx_begin(struct idx *idx, int write, struct idx_txn **out)
{
	struct idx_txn *t = calloc(1, sizeof(*t));
	int rc;

	if (!t)
		return -ENOMEM;
	t->idx = idx;
	t->write = write;
	rc = mdb_txn_begin(idx->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
	if (rc) {
		free(t);
		return mdb_err(rc, "begin");
	}
	*out = t;
	return 0;
}

int idx_commit(struct idx_txn *txn)
{
	int rc = mdb_err(mdb_txn_commit(txn->txn), "commit");
	free(txn);
	return rc;
}

void idx_abort(struct idx_txn *txn)
{
	if (!txn)
		return;
	mdb_txn_abort(txn->txn);
	free(txn);
}

/* ---- entries ------------------------------------------------------------ */

int idx_get(struct idx_txn *txn, uint64_t ino, struct idx_entry *e)
{
	unsigned char kb[8];
	MDB_val k, v;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->entries, &k, &v);
	if (rc)
		return mdb_err(rc, "get");
	return idx_entry_decode(v.mv_data, v.mv_size, e);
}

static int rewrite_paths(struct idx_txn *txn, MDB_dbi dbi, const char *from, const char *to);

/* Origin value: the archived file's inode (8 bytes, big-endian), then its
 * logical path (no terminator). */

/* Forget the origin record of old's original if it names ino. */
static int origin_drop(struct idx_txn *txn, uint64_t ino, const struct idx_entry *old)
{
	MDB_val k = {.mv_size = SUM_LEN, .mv_data = (void *)old->orig_sum}, v;
	int rc;

	if (old->state != IDX_ARCHIVED || sum_is_zero(old->orig_sum))
		return 0;
	rc = mdb_get(txn->txn, txn->idx->origins, &k, &v);
	if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size < 8 || key_ino_at(v.mv_data) != ino)))
		return 0;
	if (rc)
		return mdb_err(rc, "origin get");
	return mdb_err(mdb_del(txn->txn, txn->idx->origins, &k, NULL), "origin del");
}

int idx_put(struct idx_txn *txn, uint64_t ino, const struct idx_entry *e)
{
	unsigned char kb[8];
	uint8_t buf[IDX_ENTRY_MAX];
	struct idx_entry copy = *e, old;
	MDB_val k, v;
	int rc;

	copy.updated = (int64_t)time(NULL);
	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->entries, &k, &v);
	if (rc == 0 && idx_entry_decode(v.mv_data, v.mv_size, &old) == 0) {
		if ((rc = totals_apply(txn, &old, -1)))
			return rc;
		/* still the archive of the same original: its origin stands */
		if (!(copy.state == IDX_ARCHIVED &&
		      !memcmp(copy.orig_sum, old.orig_sum, SUM_LEN)) &&
		    (rc = origin_drop(txn, ino, &old)))
			return rc;
	} else if (rc && rc != MDB_NOTFOUND) {
		return mdb_err(rc, "get");
	}
	v.mv_size = idx_entry_encode(&copy, buf);
	v.mv_data = buf;
	rc = mdb_err(mdb_put(txn->txn, txn->idx->entries, &k, &v, 0), "put");
	if (!rc)
		rc = totals_apply(txn, &copy, 1);
	return rc;
}

/* Delete key ino from dbi; a missing key is fine. */
static int del_key(struct idx_txn *txn, MDB_dbi dbi, uint64_t ino)
{
	unsigned char kb[8];
	MDB_val k;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_del(txn->txn, dbi, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : mdb_err(rc, "del");
}

int idx_del(struct idx_txn *txn, uint64_t ino)
{
	struct idx_entry old;
	int rc = idx_get(txn, ino, &old);

	if (rc == -ENOENT)
		return 0;
	if (rc == 0 && ((rc = totals_apply(txn, &old, -1)) || (rc = origin_drop(txn, ino, &old))))
		return rc;
	if ((rc = del_key(txn, txn->idx->blocks, ino)))
		return rc;
	return del_key(txn, txn->idx->entries, ino);
}

/* ---- block digests, origins, named values ------------------------------- */

int idx_blocks_put(struct idx_txn *txn, uint64_t ino, const uint8_t *sums, uint64_t n)
{
	unsigned char kb[8];
	MDB_val k, v = {.mv_size = (size_t)n * SUM_LEN, .mv_data = (void *)sums};

	if (!n)
		return del_key(txn, txn->idx->blocks, ino);
	ino_key(ino, kb, &k);
	return mdb_err(mdb_put(txn->txn, txn->idx->blocks, &k, &v, 0), "blocks put");
}

int idx_blocks_get(struct idx_txn *txn, uint64_t ino, uint64_t i, uint8_t out[SUM_LEN])
{
	unsigned char kb[8];
	MDB_val k, v;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->blocks, &k, &v);
	if (rc)
		return rc == MDB_NOTFOUND ? -ENOENT : mdb_err(rc, "blocks get");
	if (v.mv_size % SUM_LEN || i >= v.mv_size / SUM_LEN)
		return -ENOENT;
	memcpy(out, (const uint8_t *)v.mv_data + i * SUM_LEN, SUM_LEN);
	return 0;
}

uint64_t idx_blocks_count(struct idx_txn *txn, uint64_t ino)
{
	unsigned char kb[8];
	MDB_val k, v;

	ino_key(ino, kb, &k);
	if (mdb_get(txn->txn, txn->idx->blocks, &k, &v) || v.mv_size % SUM_LEN)
		return 0;
	return v.mv_size / SUM_LEN;
}

int idx_blocks_del(struct idx_txn *txn, uint64_t ino)
{
	return del_key(txn, txn->idx->blocks, ino);
}

int idx_origin_put(struct idx_txn *txn, const uint8_t sum[SUM_LEN], uint64_t ino, const char *path)
{
	MDB_val k = {.mv_size = SUM_LEN, .mv_data = (void *)sum}, v;
	size_t len = strlen(path);
	int rc;

	if (sum_is_zero(sum))
		return 0;
	v.mv_size = 8 + len;
	rc = mdb_put(txn->txn, txn->idx->origins, &k, &v, MDB_RESERVE);
	if (rc)
		return mdb_err(rc, "origin put");
	ino_key(ino, v.mv_data, &k);
	memcpy((char *)v.mv_data + 8, path, len);
	return 0;
}

int idx_origin_get(struct idx_txn *txn, const uint8_t sum[SUM_LEN], uint64_t *ino, char *path,
		   size_t size)
{
	MDB_val k = {.mv_size = SUM_LEN, .mv_data = (void *)sum}, v;
	int rc = mdb_get(txn->txn, txn->idx->origins, &k, &v);

	if (rc)
		return rc == MDB_NOTFOUND ? -ENOENT : mdb_err(rc, "origin get");
	if (v.mv_size < 8)
		return -EPROTO;
	if (v.mv_size - 8 >= size)
		return -ENAMETOOLONG;
	*ino = key_ino_at(v.mv_data);
	memcpy(path, (char *)v.mv_data + 8, v.mv_size - 8);
	path[v.mv_size - 8] = '\0';
	return 0;
}

int idx_origins_rename(struct idx_txn *txn, const char *from, const char *to)
{
	return rewrite_paths(txn, txn->idx->origins, from, to);
}

/* The meta key of a named value: "v:" + name (the schema has its own). */
static int meta_key(const char *key, char *buf, size_t size, MDB_val *k)
{
	size_t n = strlen(key);

	if (n + 2 > size || n + 2 > 511)
		return -ENAMETOOLONG;
	memcpy(buf, "v:", 2);
	memcpy(buf + 2, key, n);
	k->mv_size = n + 2;
	k->mv_data = buf;
	return 0;
}

int idx_meta_get(struct idx_txn *txn, const char *key, void *buf, size_t size, size_t *len)
{
	char kb[128];
	MDB_val k, v;
	int rc = meta_key(key, kb, sizeof(kb), &k);

	if (rc)
		return rc;
	rc = mdb_get(txn->txn, txn->idx->meta, &k, &v);
	if (rc)
		return rc == MDB_NOTFOUND ? -ENOENT : mdb_err(rc, "meta get");
	if (v.mv_size > size)
		return -ENOSPC;
	memcpy(buf, v.mv_data, v.mv_size);
	*len = v.mv_size;
	return 0;
}

int idx_meta_put(struct idx_txn *txn, const char *key, const void *val, size_t len)
{
	char kb[128];
	MDB_val k, v = {.mv_size = len, .mv_data = (void *)val};
	int rc = meta_key(key, kb, sizeof(kb), &k);

	if (rc)
		return rc;
	if (len > IDX_META_MAX)
		return -E2BIG;
	return mdb_err(mdb_put(txn->txn, txn->idx->meta, &k, &v, 0), "meta put");
}

int idx_meta_del(struct idx_txn *txn, const char *key)
{
	char kb[128];
	MDB_val k;
	int rc = meta_key(key, kb, sizeof(kb), &k);

	if (rc)
		return rc;
	rc = mdb_del(txn->txn, txn->idx->meta, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : mdb_err(rc, "meta del");
}

/* ---- queue -------------------------------------------------------------- */

/* Longest queued path, with its terminator. */
#define QUEUE_PATH_MAX 4097

/* Queue value: 8-byte generation, then the path (no terminator). */
int idx_queue_put(struct idx_txn *txn, uint64_t ino, uint64_t gen, const char *path)
{
	size_t len = strlen(path);
	unsigned char kb[8];
	MDB_val k, v = {.mv_size = 8 + len};
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_put(txn->txn, txn->idx->queue, &k, &v, MDB_RESERVE);
	if (rc)
		return mdb_err(rc, "queue put");
	memcpy(v.mv_data, &gen, 8);
	memcpy((char *)v.mv_data + 8, path, len);
	return 0;
}

/* Decode a queue value into gen and path; -ENAMETOOLONG if it does not fit. */
static int queue_val(const MDB_val *v, uint64_t *gen, char *path, size_t size)
{
	if (v->mv_size < 8)
		return -EPROTO;
	memcpy(gen, v->mv_data, 8);
	if (v->mv_size - 8 >= size)
		return -ENAMETOOLONG;
	memcpy(path, (char *)v->mv_data + 8, v->mv_size - 8);
	path[v->mv_size - 8] = '\0';
	return 0;
}

int idx_queue_get(struct idx_txn *txn, uint64_t ino, uint64_t *gen, char *path, size_t size)
{
	unsigned char kb[8];
	MDB_val k, v;
	int rc;

	ino_key(ino, kb, &k);
	rc = mdb_get(txn->txn, txn->idx->queue, &k, &v);
	if (rc)
		return mdb_err(rc, "queue get");
	return queue_val(&v, gen, path, size);
}

int idx_queue_del(struct idx_txn *txn, uint64_t ino)
{
	return del_key(txn, txn->idx->queue, ino);
}

int idx_queue_each(struct idx_txn *txn,
		   int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path), void *arg)
{
	return idx_queue_each_from(txn, 0, fn, arg);
}

int idx_queue_each_from(struct idx_txn *txn, uint64_t from,
			int (*fn)(void *arg, uint64_t ino, uint64_t gen, const char *path),
			void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	unsigned char kb[8];
	char *path = malloc(QUEUE_PATH_MAX);
	int rc;

	if (!path)
		return -ENOMEM;
	rc = mdb_cursor_open(txn->txn, txn->idx->queue, &cur);
	if (rc) {
		free(path);
		return mdb_err(rc, "cursor");
	}
	/* keys are big-endian inode numbers: their byte order is theirs */
	ino_key(from, kb, &k);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		uint64_t gen;
		if (queue_val(&v, &gen, path, QUEUE_PATH_MAX) == 0 &&
		    fn(arg, key_ino(&k), gen, path))
			break;
	}
	mdb_cursor_close(cur);
	free(path);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "queue each");
}

/* Rewrite the paths of dbi's records (8 bytes, then a path) equal to from,
 * or below it, to live under to. The matches are collected first and
 * written after the cursor is closed. */
static int rewrite_paths(struct idx_txn *txn, MDB_dbi dbi, const char *from, const char *to)
{
	size_t flen = strlen(from), tlen = strlen(to), n = 0, cap = 0;
	struct moved {
		MDB_val key; /* a copy */
		uint8_t head[8];
		char *path;
	} *list = NULL;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, ret = 0;

	rc = mdb_cursor_open(txn->txn, dbi, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const char *p = (const char *)v.mv_data + 8;
		size_t plen = v.mv_size - 8;

		if (v.mv_size < 8 || plen < flen || memcmp(p, from, flen) != 0 ||
		    (plen > flen && p[flen] != '/'))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct moved *grown = realloc(list, cap * sizeof(*list));
			if (!grown) {
				ret = -ENOMEM;
				break;
			}
			list = grown;
		}
		char *np = malloc(tlen + plen - flen + 1), *kp = malloc(k.mv_size);
		if (!np || !kp) {
			free(np);
			free(kp);
			ret = -ENOMEM;
			break;
		}
		memcpy(np, to, tlen);
		memcpy(np + tlen, p + flen, plen - flen);
		np[tlen + plen - flen] = '\0';
		memcpy(kp, k.mv_data, k.mv_size);
		list[n].key.mv_data = kp;
		list[n].key.mv_size = k.mv_size;
		memcpy(list[n].head, v.mv_data, 8);
		list[n++].path = np;
	}
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND && !ret)
		ret = mdb_err(rc, "rename");
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(list[i].path);
		MDB_val nv = {.mv_size = 8 + len};
		if (!ret && !(ret = mdb_err(mdb_put(txn->txn, dbi, &list[i].key, &nv, MDB_RESERVE),
					    "rename put"))) {
			memcpy(nv.mv_data, list[i].head, 8);
			memcpy((char *)nv.mv_data + 8, list[i].path, len);
		}
		free(list[i].key.mv_data);
		free(list[i].path);
	}
	free(list);
	return ret;
}

int idx_queue_rename(struct idx_txn *txn, const char *from, const char *to)
{
	return rewrite_paths(txn, txn->idx->queue, from, to);
}

/* ---- journal ------------------------------------------------------------
 *
 * An intent: staged ino, archive ino (u64 each), the entry's length (u16)
 * and encoding, then the path (no terminator).
 */

int idx_intent_put(struct idx_txn *txn, const struct idx_intent *in)
{
	uint8_t ebuf[IDX_ENTRY_MAX];
	size_t elen = idx_entry_encode(&in->entry, ebuf);
	size_t len = strnlen(in->path, sizeof(in->path) - 1);
	unsigned char kb[8];
	MDB_val k, v = {.mv_size = 18 + elen + len};
	struct wr w;
	int rc;

	ino_key(in->staged_ino, kb, &k);
	rc = mdb_put(txn->txn, txn->idx->journal, &k, &v, MDB_RESERVE);
	if (rc)
		return mdb_err(rc, "journal put");
	w.p = v.mv_data;
	w.n = 0;
	wr_u64(&w, in->staged_ino);
	wr_u64(&w, in->archive_ino);
	w.p[w.n++] = (uint8_t)(elen & 0xFF);
	w.p[w.n++] = (uint8_t)(elen >> 8);
	wr_bytes(&w, ebuf, elen);
	wr_bytes(&w, in->path, len);
	return 0;
}

int idx_intent_del(struct idx_txn *txn, uint64_t staged_ino)
{
	return del_key(txn, txn->idx->journal, staged_ino);
}

/* Decode a journal value into in; -EPROTO when it is not one. */
static int intent_decode(const MDB_val *v, struct idx_intent *in)
{
	struct rd r = {v->mv_data, 0, v->mv_size, 0};
	const uint8_t *lb, *eb;
	size_t elen, plen;

	memset(in, 0, sizeof(*in));
	in->staged_ino = rd_u64(&r);
	in->archive_ino = rd_u64(&r);
	lb = rd_take(&r, 2);
	elen = lb ? (size_t)(lb[0] | lb[1] << 8) : 0;
	eb = rd_take(&r, elen);
	if (r.bad || idx_entry_decode(eb, elen, &in->entry))
		return -EPROTO;
	plen = r.len - r.n;
	if (plen >= sizeof(in->path))
		return -EPROTO;
	rd_bytes(&r, in->path, plen);
	return 0;
}

int idx_intent_each(struct idx_txn *txn, int (*fn)(void *arg, const struct idx_intent *in),
		    void *arg)
{
	struct idx_intent *in = malloc(sizeof(*in));
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	if (!in)
		return -ENOMEM;
	rc = mdb_cursor_open(txn->txn, txn->idx->journal, &cur);
	if (rc) {
		free(in);
		return mdb_err(rc, "cursor");
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (intent_decode(&v, in))
			continue;
		if (fn(arg, in))
			break;
	}
	mdb_cursor_close(cur);
	free(in);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "journal each");
}

/* ---- walking and totals ------------------------------------------------- */

int idx_each(struct idx_txn *txn, int (*fn)(void *arg, uint64_t ino, const struct idx_entry *e),
	     void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	rc = mdb_cursor_open(txn->txn, txn->idx->entries, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		struct idx_entry e;
		if (idx_entry_decode(v.mv_data, v.mv_size, &e))
			continue;
		if (fn(arg, key_ino(&k), &e))
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "each");
}

int idx_stats(struct idx_txn *txn, struct idx_stats *st)
{
	MDB_cursor *cur;
	MDB_stat ms;
	MDB_val k, v;
	int rc;

	memset(st, 0, sizeof(*st));
	rc = mdb_stat(txn->txn, txn->idx->queue, &ms);
	if (rc)
		return mdb_err(rc, "stat");
	st->queued = ms.ms_entries;
	rc = mdb_cursor_open(txn->txn, txn->idx->totals, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	/* the few "d", "s..." and "u" keys; the reason keys ("r...", between
	 * "d" and "s") are jumped over */
	rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		const uint8_t *kp = k.mv_data;
		struct idx_count c;

		if (k.mv_size && kp[0] == 'r') {
			k.mv_size = 1;
			k.mv_data = "s";
			rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
			continue;
		}
		total_get(&v, &c);
		if (k.mv_size == 1 && kp[0] == 'd') {
			st->damaged = c.files;
		} else if (k.mv_size == 1 && kp[0] == 'u') {
			st->unsummed = c.files;
		} else if (k.mv_size == 3 && kp[0] == 's' && kp[1] < IDX_NSTATES &&
			   kp[2] < IDX_NKINDS) {
			st->by[kp[1]][kp[2]] = c;
			st->by_state[kp[1]] += c.files;
			st->files += c.files;
			st->bytes_original += c.bytes_original;
			st->bytes_stored += c.bytes_stored;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "totals");
}

int idx_reasons_each(struct idx_txn *txn,
		     int (*fn)(void *arg, const char *group, const struct idx_count *c), void *arg)
{
	MDB_cursor *cur;
	MDB_val k = {.mv_size = 1, .mv_data = "r"}, v;
	char group[160];
	int rc;

	rc = mdb_cursor_open(txn->txn, txn->idx->totals, &cur);
	if (rc)
		return mdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const char *kp = k.mv_data;
		struct idx_count c;
		size_t n = k.mv_size - 1;

		if (k.mv_size < 1 || kp[0] != 'r')
			break;
		if (n >= sizeof(group))
			continue;
		memcpy(group, kp + 1, n);
		group[n] = '\0';
		total_get(&v, &c);
		if (fn(arg, group, &c))
			break;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND || rc == 0 ? 0 : mdb_err(rc, "reasons");
}

const char *idx_state_name(enum idx_state s)
{
	static const char *const names[IDX_NSTATES] = {
	    [IDX_STAGED] = "staged", [IDX_PENDING] = "pending", [IDX_ARCHIVED] = "archived",
	    [IDX_KEPT] = "kept",     [IDX_FAILED] = "failed",
	};
	return s > 0 && s < IDX_NSTATES ? names[s] : "unknown";
}

const char *idx_kind_name(enum idx_kind k)
{
	static const char *const names[IDX_NKINDS] = {
	    [IDX_KIND_UNKNOWN] = "unknown",
	    [IDX_KIND_PHOTO] = "photo",
	    [IDX_KIND_VIDEO] = "video",
	    [IDX_KIND_OTHER] = "other",
	};
	return k < IDX_NKINDS ? names[k] : "unknown";
}
