/* xfer — `hevcfs import` and `hevcfs export`: their arguments, progress and
 * report. The work is fs/'s (import.c, export.c). */
#include "tools.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>

/* Exit status of a run stopped by the user (128 + SIGINT). */
#define EXIT_INTERRUPTED 130

static atomic_int stop;

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop, 1);
}

static void catch_signals(void)
{
	/* a line as each file is done, also into a pipe (tee, a job runner) */
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {.sa_handler = on_signal};

	/* the archive children's lines of every photo would bury the report */
	setenv("HEVCFS_LOG_LEVEL", "warning", 0);
	log_set_level(LOG_WARNING);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Flags of both commands. */
struct xfer_flags {
	int jobs, dry_run, shard_k, shard_n, native, quiet;
	const char *into;
};

static int xfer_flag(void *arg, int argc, char *argv[])
{
	struct xfer_flags *f = arg;
	const char *a = argv[0], *val = NULL;
	int took = 1;

	if (!strcmp(a, "--dry-run")) {
		f->dry_run = 1;
		return 1;
	}
	if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
		f->quiet = 1;
		return 1;
	}
	if (!strcmp(a, "--view=native") || !strcmp(a, "--native")) {
		f->native = 1;
		return 1;
	}
	if (!strcmp(a, "--view=legacy")) {
		f->native = 0;
		return 1;
	}
	if (!strncmp(a, "--view=", 7)) {
		fprintf(stderr, "hevcfs: %s: expected --view=legacy or --view=native\n", a);
		return -1;
	}
	if (!strcmp(a, "--jobs") || !strcmp(a, "--shard") || !strcmp(a, "--into")) {
		if (argc < 2) {
			fprintf(stderr, "hevcfs: %s needs a value\n", a);
			return -1;
		}
		val = argv[1];
		took = 2;
	} else if (!strncmp(a, "--jobs=", 7) || !strncmp(a, "--shard=", 8) ||
		   !strncmp(a, "--into=", 7)) {
		val = strchr(a, '=') + 1;
	} else {
		return 0;
	}
	if (!strncmp(a, "--jobs", 6)) {
		char *end;
		long n = strtol(val, &end, 10);
		if (*end || n < 1 || n > 256) {
			fprintf(stderr, "hevcfs: --jobs %s: expected 1..256\n", val);
			return -1;
		}
		f->jobs = (int)n;
	} else if (!strncmp(a, "--shard", 7)) {
		if (sscanf(val, "%d/%d", &f->shard_k, &f->shard_n) != 2 || f->shard_n < 1 ||
		    f->shard_k < 1 || f->shard_k > f->shard_n) {
			fprintf(stderr, "hevcfs: --shard %s: expected K/N with 1 <= K <= N\n", val);
			return -1;
		}
	} else {
		f->into = val;
	}
	return took;
}

/* The progress line and the per-file lines of a run. */
struct xfer_ui {
	const char *verb;
	int quiet;
};

static void on_file(void *arg, const struct fs_xfer_file *f, const struct fs_xfer_totals *t)
{
	struct xfer_ui *ui = arg;
	char bar[40], a[32], b[32], eta[32];
	double frac = t->bytes_total ? (double)t->bytes_in / (double)t->bytes_total : 0;
	double speed = t->seconds > 0 ? (double)t->bytes_in / t->seconds : 0;
	static const char *const said[] = {
	    [FS_XFER_COPIED] = "copied",   [FS_XFER_ARCHIVED] = "archived",
	    [FS_XFER_KEPT] = "kept",	   [FS_XFER_SKIPPED] = "skipped",
	    [FS_XFER_DAMAGED] = "DAMAGED", [FS_XFER_ERROR] = "ERROR",
	};

	if (f->outcome == FS_XFER_DAMAGED || f->outcome == FS_XFER_ERROR ||
	    (!ui->quiet && !progress_tty() && f->outcome != FS_XFER_SKIPPED)) {
		progress_done();
		printf("%s: %s", said[f->outcome], f->path);
		if (f->outcome == FS_XFER_ARCHIVED && f->bytes_in)
			printf(" (%s -> %s)", human_bytes(f->bytes_in, a, sizeof(a)),
			       human_bytes(f->bytes_out, b, sizeof(b)));
		if (f->what[0])
			printf(": %s", f->what);
		printf("\n");
	}
	if (!progress_tty())
		return;
	if (frac > 1)
		frac = 1;
	progress_bar(bar, 24, frac);
	if (t->bytes_total && speed > 0)
		human_time(
		    (double)(t->bytes_total > t->bytes_in ? t->bytes_total - t->bytes_in : 0) /
			speed,
		    eta, sizeof(eta));
	else
		snprintf(eta, sizeof(eta), "?");
	progress_line(0, "%s %3.0f%%  %llu/%llu files  %s  %.0f photos/min  %s left  %.50s", bar,
		      100 * frac, (unsigned long long)t->files, (unsigned long long)t->files_total,
		      human_bytes(t->bytes_in, a, sizeof(a)),
		      t->seconds > 0 ? 60.0 * (double)t->photos / t->seconds : 0.0, eta, f->path);
}

/* The closing lines of a run. */
static void summary(const char *verb, const struct fs_xfer_totals *t, int rc)
{
	char a[32], b[32];

	progress_done();
	printf("%s %llu file(s) in %.1f s: %llu archived, %llu kept, %llu copied, %llu already "
	       "there, %llu damaged, %llu failed; %s in, %s out",
	       verb, (unsigned long long)t->files, t->seconds, (unsigned long long)t->archived,
	       (unsigned long long)t->kept, (unsigned long long)t->copied,
	       (unsigned long long)t->skipped, (unsigned long long)t->damaged,
	       (unsigned long long)t->errors, human_bytes(t->bytes_in, a, sizeof(a)),
	       human_bytes(t->bytes_out, b, sizeof(b)));
	if (t->photos && t->seconds > 0)
		printf("; %.1f photos/min", 60.0 * (double)t->photos / t->seconds);
	printf("\n");
	if (rc == -EINTR)
		printf("interrupted: run the same command again to go on where it stopped\n");
}

/* The codec options BACKING was first mounted with, when it has any. */
static void saved_codec(const struct fs_paths *p, struct fs_config *cfg)
{
	char saved[4096], err[256], *save = NULL;

	fs_config_init(cfg);
	if (!p || opt_load(p, saved, sizeof(saved)))
		return;
	for (char *kv = strtok_r(saved, ",", &save); kv; kv = strtok_r(NULL, ",", &save))
		opt_apply(cfg, kv, err, sizeof(err));
}

int cmd_import(int argc, char *argv[])
{
	struct xfer_flags f = {0};
	struct xfer_ui ui = {"imported", 0};
	struct cmd_args a;
	struct fs_paths p = {0};
	struct fs_import im = {0};
	struct fs_xfer_totals t;
	struct fs_config cfg;
	char *backing = NULL;
	int rc;

	/* "import SRC... BACKING": BACKING is the last positional */
	rc = cmd_parse("import", argc, argv, &a, xfer_flag, &f);
	if (rc)
		goto out_args;
	if (a.nrest < 1) {
		fprintf(stderr, "hevcfs import: expected SRC... BACKING\n%s", usage_text);
		rc = EX_USAGE;
		goto out_args;
	}
	{
		const char *last = a.rest[a.nrest - 1];
		for (int i = a.nrest - 1; i > 0; i--)
			a.rest[i] = a.rest[i - 1];
		a.rest[0] = a.backing;
		a.backing = last;
	}
	backing = f.dry_run ? strdup(a.backing) : realpath(a.backing, NULL);
	if (!backing && errno == ENOENT && mkdir(a.backing, 0755) == 0)
		backing = realpath(a.backing, NULL);
	if (!backing) {
		fprintf(stderr, "hevcfs import: %s: %s\n", a.backing, strerror(errno));
		rc = EX_CANTCREAT;
		goto out_args;
	}
	/* a shard leaves BACKING's state alone: the index is built once all
	 * shards are done, and it may live elsewhere than any of them runs */
	if (!f.shard_n && !f.dry_run && (rc = cmd_paths("import", &a, 1, &p)))
		goto out_args;
	saved_codec(f.shard_n || f.dry_run ? NULL : &p, &cfg);
	catch_signals();
	im.backing = backing;
	im.paths = f.shard_n || f.dry_run ? NULL : &p;
	im.srcs = a.rest;
	im.nsrcs = a.nrest;
	im.into = f.into;
	im.jobs = f.jobs;
	im.shard_k = f.shard_k;
	im.shard_n = f.shard_n;
	im.stop = &stop;
	im.codec = &cfg.codec;
	im.report = on_file;
	im.arg = &ui;
	ui.quiet = f.quiet;
	if (f.dry_run) {
		struct fs_import_estimate est;
		char x[32], y[32], z[32], w[32];
		uint64_t all = 0;
		rc = fs_import_estimate(&im, &est);
		if (rc && rc != -EINTR) {
			fprintf(stderr, "hevcfs import: %s\n", strerror(-rc));
			rc = EX_NOINPUT;
			goto out;
		}
		for (int k = 0; k < IDX_NKINDS; k++)
			all += est.bytes[k];
		printf(
		    "%llu photos (%s), %llu videos (%s), %llu other files (%s)\n",
		    (unsigned long long)est.files[IDX_KIND_PHOTO],
		    human_bytes(est.bytes[IDX_KIND_PHOTO], x, sizeof(x)),
		    (unsigned long long)est.files[IDX_KIND_VIDEO],
		    human_bytes(est.bytes[IDX_KIND_VIDEO], y, sizeof(y)),
		    (unsigned long long)(est.files[IDX_KIND_OTHER] + est.files[IDX_KIND_UNKNOWN]),
		    human_bytes(est.bytes[IDX_KIND_OTHER] + est.bytes[IDX_KIND_UNKNOWN], z,
				sizeof(z)));
		printf(
		    "a sample of %llu archived: photos to %.0f%%, videos to %.0f%% of their size\n",
		    (unsigned long long)est.sampled, 100 * est.ratio_photo, 100 * est.ratio_video);
		printf(
		    "estimate: %s stored for %s (saving %s, %.0f%%); about %s of work\n",
		    human_bytes(est.estimate_out, x, sizeof(x)), human_bytes(all, y, sizeof(y)),
		    human_bytes(all > est.estimate_out ? all - est.estimate_out : 0, z, sizeof(z)),
		    all ? 100.0 *
			      (double)(all - (est.estimate_out < all ? est.estimate_out : all)) /
			      (double)all
			: 0.0,
		    human_time((double)est.bytes[IDX_KIND_PHOTO] * est.seconds_photo +
				   (double)est.bytes[IDX_KIND_VIDEO] * est.seconds_video,
			       w, sizeof(w)));
		rc = rc == -EINTR ? EXIT_INTERRUPTED : EX_OK;
		goto out;
	}
	rc = fs_import(&im, &t);
	if (rc == -EBUSY) {
		fprintf(stderr,
			"hevcfs import: %s is mounted: copy into the mount instead, or "
			"unmount it\n",
			backing);
		rc = EX_TEMPFAIL;
		goto out;
	}
	if (rc && rc != -EINTR) {
		fprintf(stderr, "hevcfs import: %s\n", strerror(-rc));
		rc = EX_SOFTWARE;
		goto out;
	}
	summary(ui.verb, &t, rc);
	if (f.shard_n)
		printf("shard %d/%d done: once every shard is, run hevcfs fsck --rebuild %s\n",
		       f.shard_k, f.shard_n, backing);
	rc = rc == -EINTR ? EXIT_INTERRUPTED : t.errors ? 1 : EX_OK;
out:
	free(backing);
	fs_paths_release(&p);
out_args:
	opt_release();
	free(a.rest);
	return rc;
}

int cmd_export(int argc, char *argv[])
{
	struct xfer_flags f = {0};
	struct xfer_ui ui = {"exported", 0};
	struct cmd_args a;
	struct fs_paths p = {0};
	struct fs_export x = {0};
	struct fs_xfer_totals t;
	struct fs_config cfg;
	int rc;

	rc = cmd_parse("export", argc, argv, &a, xfer_flag, &f);
	if (!rc && a.nrest < 1) {
		fprintf(stderr, "hevcfs export: missing DEST\n%s", usage_text);
		rc = EX_USAGE;
	}
	if (!rc)
		rc = cmd_paths("export", &a, 0, &p);
	if (rc)
		goto out_args;
	saved_codec(&p, &cfg);
	catch_signals();
	x.paths = &p;
	x.dest = a.rest[0];
	x.native = f.native;
	x.only = a.rest + 1;
	x.nonly = a.nrest - 1;
	x.jobs = f.jobs;
	x.stop = &stop;
	x.codec = &cfg.codec;
	x.report = on_file;
	x.arg = &ui;
	ui.quiet = f.quiet;
	rc = fs_export(&x, &t);
	if (rc && rc != -EINTR) {
		fprintf(stderr, "hevcfs export: %s\n", strerror(-rc));
		rc = EX_SOFTWARE;
		goto out;
	}
	summary(ui.verb, &t, rc);
	rc = rc == -EINTR ? EXIT_INTERRUPTED : t.errors || t.damaged ? 1 : EX_OK;
out:
	fs_paths_release(&p);
out_args:
	opt_release();
	free(a.rest);
	return rc;
}
