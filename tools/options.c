/* options — hevcfs's own -o options: their names, checks and meaning, and
 * the set a backing directory was first mounted with, saved in its index as
 * its defaults. */
#include "tools.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The meta key the saved options live under. */
#define OPT_META_KEY "config"

/* x265's presets, fastest first. */
static const char *const presets[] = {"ultrafast", "superfast", "veryfast", "faster",	"fast",
				      "medium",	   "slow",	"slower",   "veryslow", "placebo"};

/* Strings options hand to fs_config: kept for the life of the process. */
static char *kept_strings[8];

/* Keep a copy of s in slot i (a later value replaces it). */
static const char *keep(int i, const char *s)
{
	free(kept_strings[i]);
	kept_strings[i] = strdup(s);
	return kept_strings[i];
}

/* An integer in [lo, hi], or -1 with err set. */
static long int_in(const char *key, const char *v, long lo, long hi, char *err, size_t len)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || end == v || *end || n < lo || n > hi) {
		snprintf(err, len, "%s=%s: expected a whole number from %ld to %ld", key, v, lo,
			 hi);
		return -1;
	}
	return n;
}

/* A number in [lo, hi], or -1 with err set. */
static double num_in(const char *key, const char *v, double lo, double hi, char *err, size_t len)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (errno || end == v || *end || !(d >= lo && d <= hi)) {
		snprintf(err, len, "%s=%s: expected a number from %g to %g", key, v, lo, hi);
		return -1;
	}
	return d;
}

/* on/off, or -1 with err set. */
static int on_off(const char *key, const char *v, char *err, size_t len)
{
	if (!strcmp(v, "on") || !strcmp(v, "1") || !strcmp(v, "yes"))
		return 1;
	if (!strcmp(v, "off") || !strcmp(v, "0") || !strcmp(v, "no"))
		return 0;
	snprintf(err, len, "%s=%s: expected on or off", key, v);
	return -1;
}

static const char *const own[] = {
    "workers",	    "settle_ms", "view",      "cache_mb",    "photo_quality",  "min_ssim",
    "view_quality", "crf",	 "preset",    "x265_params", "min_video_ssim", "verify_reads",
    "scrub_days",   "state",	 "heic_view", "max_nodes",   "splice",	       "readahead_kb",
};

int opt_is_own(const char *key)
{
	size_t n = strcspn(key, "=");

	for (size_t i = 0; i < sizeof(own) / sizeof(*own); i++)
		if (strlen(own[i]) == n && !strncmp(key, own[i], n))
			return 1;
	return 0;
}

int opt_apply(struct fs_config *cfg, const char *kv, char *err, size_t len)
{
	char key[32];
	const char *v = strchr(kv, '=');
	size_t n = v ? (size_t)(v - kv) : strlen(kv);
	long i;
	double d;

	if (!v || n >= sizeof(key)) {
		snprintf(err, len, "%s: expected KEY=VALUE", kv);
		return -EINVAL;
	}
	memcpy(key, kv, n);
	key[n] = '\0';
	v++;
	if (!strcmp(key, "workers")) {
		if ((i = int_in(key, v, 0, 256, err, len)) < 0)
			return -EINVAL;
		cfg->workers = (int)i;
	} else if (!strcmp(key, "settle_ms")) {
		if ((i = int_in(key, v, 0, 3600000, err, len)) < 0)
			return -EINVAL;
		cfg->settle_ms = (int)i;
	} else if (!strcmp(key, "view")) {
		if (!strcmp(v, "legacy")) {
			cfg->view = FS_VIEW_LEGACY;
		} else if (!strcmp(v, "native")) {
			cfg->view = FS_VIEW_NATIVE;
		} else {
			snprintf(err, len, "view=%s: expected legacy or native", v);
			return -EINVAL;
		}
	} else if (!strcmp(key, "cache_mb")) {
		if ((i = int_in(key, v, 0, 1L << 30, err, len)) < 0)
			return -EINVAL;
		cfg->cache_bytes = (uint64_t)i << 20;
	} else if (!strcmp(key, "photo_quality")) {
		if (!strcmp(v, "auto")) {
			cfg->codec.photo_quality = 0;
		} else if ((i = int_in(key, v, 1, 100, err, len)) < 0) {
			snprintf(err, len, "photo_quality=%s: expected auto or 1..100", v);
			return -EINVAL;
		} else {
			cfg->codec.photo_quality = (int)i;
		}
	} else if (!strcmp(key, "min_ssim")) {
		if ((d = num_in(key, v, 0, 1, err, len)) < 0)
			return -EINVAL;
		cfg->codec.min_ssim = d;
	} else if (!strcmp(key, "view_quality")) {
		if ((i = int_in(key, v, 1, 100, err, len)) < 0)
			return -EINVAL;
		cfg->codec.view_quality = (int)i;
	} else if (!strcmp(key, "crf")) {
		if ((i = int_in(key, v, 0, 51, err, len)) < 0)
			return -EINVAL;
		cfg->codec.crf = (int)i;
	} else if (!strcmp(key, "preset")) {
		size_t k;
		for (k = 0; k < sizeof(presets) / sizeof(*presets) && strcmp(v, presets[k]); k++)
			;
		if (k == sizeof(presets) / sizeof(*presets)) {
			snprintf(err, len, "preset=%s: not an x265 preset (ultrafast .. placebo)",
				 v);
			return -EINVAL;
		}
		cfg->codec.preset = keep(0, v);
	} else if (!strcmp(key, "x265_params")) {
		cfg->codec.x265_params = *v ? keep(1, v) : NULL;
	} else if (!strcmp(key, "min_video_ssim")) {
		if ((d = num_in(key, v, 0, 1, err, len)) < 0)
			return -EINVAL;
		cfg->codec.min_video_ssim = d;
	} else if (!strcmp(key, "verify_reads")) {
		if ((i = on_off(key, v, err, len)) < 0)
			return -EINVAL;
		cfg->verify_reads = (int)i;
	} else if (!strcmp(key, "splice")) {
		if ((i = on_off(key, v, err, len)) < 0)
			return -EINVAL;
		cfg->splice = (int)i;
	} else if (!strcmp(key, "scrub_days")) {
		if (!strcmp(v, "off"))
			i = 0;
		else if ((i = int_in(key, v, 0, 36500, err, len)) < 0)
			return -EINVAL;
		cfg->scrub_days = (int)i;
	} else if (!strcmp(key, "state")) {
		cfg->state = *v ? keep(2, v) : NULL;
	} else if (!strcmp(key, "heic_view")) {
		if (!strcmp(v, "jpeg")) {
			cfg->heic_view = 1;
		} else if (!strcmp(v, "off") || !strcmp(v, "native")) {
			cfg->heic_view = 0;
		} else {
			snprintf(err, len, "heic_view=%s: expected jpeg or off", v);
			return -EINVAL;
		}
	} else if (!strcmp(key, "max_nodes")) {
		if ((i = int_in(key, v, 0, 1L << 24, err, len)) < 0)
			return -EINVAL;
		cfg->max_nodes = (int)i;
	} else if (!strcmp(key, "readahead_kb")) {
		if ((i = int_in(key, v, 0, 1024, err, len)) < 0)
			return -EINVAL;
		cfg->readahead_kb = (int)i;
	} else {
		snprintf(err, len, "%s: not an option of hevcfs", key);
		return -EINVAL;
	}
	return 0;
}

int opt_has(const char *opts, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = opts; p && *p;) {
		if (!strncmp(p, key, n) && p[n] == '=')
			return 1;
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return 0;
}

int opt_load(const struct fs_paths *p, char *buf, size_t size)
{
	struct idx *idx;
	struct idx_txn *txn;
	size_t len = 0;
	int rc = fs_index_open(p, 1, &idx);

	if (rc)
		return rc;
	rc = idx_begin(idx, 0, &txn);
	if (!rc) {
		rc = idx_meta_get(txn, OPT_META_KEY, buf, size - 1, &len);
		idx_abort(txn);
	}
	idx_close(idx);
	if (!rc)
		buf[len] = '\0';
	return rc;
}

int opt_save(const struct fs_paths *p, const char *opts)
{
	struct idx *idx;
	struct idx_txn *txn;
	int rc = fs_index_open(p, 0, &idx);

	if (rc)
		return rc;
	rc = idx_begin(idx, 1, &txn);
	if (!rc) {
		rc = idx_meta_put(txn, OPT_META_KEY, opts, strlen(opts));
		if (rc)
			idx_abort(txn);
		else
			rc = idx_commit(txn);
	}
	idx_close(idx);
	return rc;
}

void opt_release(void)
{
	for (size_t i = 0; i < sizeof(kept_strings) / sizeof(*kept_strings); i++) {
		free(kept_strings[i]);
		kept_strings[i] = NULL;
	}
}
