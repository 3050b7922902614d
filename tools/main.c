/*
 * hevcfs — the program: mount, status, wait, fsck. Argument parsing and
 * reporting only; the filesystem lives in fs/, the index in index/.
 */
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fuse.h>
#include <fuse_opt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "../fs/fs.h"
#include "../index/index.h"
#include "../lib/lib.h"

static const char usage_text[] =
	"usage: hevcfs BACKING MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]]\n"
	"       hevcfs mount BACKING MOUNTPOINT [...]\n"
	"       hevcfs status BACKING [--json] [--files]\n"
	"       hevcfs wait BACKING [--timeout SECONDS]\n"
	"       hevcfs fsck BACKING [--rebuild]\n"
	"       hevcfs --help | --version\n";

static const char help_text[] =
	"\n"
	"hevcfs keeps every file written to MOUNTPOINT on BACKING at once, then in\n"
	"the background stores JPEG photos as HEIC and videos as HEVC MP4, and\n"
	"reads them back under their original names (photos as JPEG).\n"
	"\n"
	"Commands:\n"
	"  (mount)   mount BACKING on MOUNTPOINT (daemonizes unless -f)\n"
	"  status    counts by state, bytes written and stored, queue, running jobs;\n"
	"            --files: each file's state, sizes, quality, SSIM, reason;\n"
	"            --json: one JSON object\n"
	"  wait      return 0 once nothing is staged or pending, 1 on timeout\n"
	"            (69 at once when BACKING is not mounted and work is waiting)\n"
	"  fsck      finish or roll back interrupted work, index files it does not know;\n"
	"            --rebuild: a new index from the backing tree alone\n"
	"\n"
	"Mount options (-o):\n"
	"  workers=N          transcoding threads (default: number of cores)\n"
	"  settle_ms=N        quiet time after the last close before archiving (1000)\n"
	"  view=legacy|native legacy: photos read as JPEG under their names (default);\n"
	"                     native: the stored files as they are (IMG.JPG.heic)\n"
	"  cache_mb=N         bound of the rendered-view cache (1024)\n"
	"  photo_quality=auto|N  HEIC quality: auto = lowest meeting min_ssim (auto)\n"
	"  min_ssim=X         photo luma SSIM floor (0.99)\n"
	"  view_quality=N     JPEG view quality (92)\n"
	"  crf=N              x265 CRF for videos (22)\n"
	"  preset=NAME        x265 preset for videos (medium) and photos (fast)\n"
	"  x265_params=K=V:.. extra x265 parameters\n"
	"  min_video_ssim=X   video luma SSIM floor (0.97)\n"
	"  Standard FUSE options pass through (allow_other, ro, ...);\n"
	"  default_permissions is always on.\n";

/* hevcfs's own -o options, parsed into these before FUSE sees the rest. */
struct cli {
	int workers, settle_ms, view_quality, crf, cache_mb;
	char *view, *photo_quality, *preset, *x265_params;
	double min_ssim, min_video_ssim;
	char *backing;
	int nonopts;
	int help, version;
};

#define OPT(t, f) {t, offsetof(struct cli, f), 0}
static const struct fuse_opt cli_opts[] = {
	OPT("workers=%d", workers),
	OPT("settle_ms=%d", settle_ms),
	OPT("view=%s", view),
	OPT("cache_mb=%d", cache_mb),
	OPT("photo_quality=%s", photo_quality),
	OPT("min_ssim=%lf", min_ssim),
	OPT("view_quality=%d", view_quality),
	OPT("crf=%d", crf),
	OPT("preset=%s", preset),
	OPT("x265_params=%s", x265_params),
	OPT("min_video_ssim=%lf", min_video_ssim),
	FUSE_OPT_END,
};

/* Take BACKING (the first non-option) for ourselves; the rest goes to FUSE. */
static int cli_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct cli *c = data;

	(void)out;
	if (key == FUSE_OPT_KEY_NONOPT && c->nonopts++ == 0) {
		c->backing = realpath(arg, NULL);
		if (!c->backing) {
			fprintf(stderr, "hevcfs: %s: %s\n", arg, strerror(errno));
			return -1;
		}
		return 0;
	}
	return 1;
}

static int cmd_mount(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fs_config cfg;
	struct cli c = {.workers = -1, .settle_ms = -1, .view_quality = -1, .crf = -1,
			.cache_mb = -1, .min_ssim = -1, .min_video_ssim = -1};
	char fsname[PATH_MAX + 128];
	int rc = EX_USAGE;

	if (fuse_opt_parse(&args, &c, cli_opts, cli_proc) == -1)
		goto out;
	if (c.nonopts < 2) {
		fprintf(stderr, "hevcfs: %s\n%s", c.nonopts ? "missing MOUNTPOINT" : "missing BACKING",
			usage_text);
		goto out;
	}
	fs_config_init(&cfg);
	cfg.backing = c.backing;
	if (c.workers >= 0)
		cfg.workers = c.workers;
	if (c.settle_ms >= 0)
		cfg.settle_ms = c.settle_ms;
	if (c.cache_mb >= 0)
		cfg.cache_bytes = (uint64_t)c.cache_mb << 20;
	if (c.view && !strcmp(c.view, "native")) {
		cfg.view = FS_VIEW_NATIVE;
	} else if (c.view && strcmp(c.view, "legacy")) {
		fprintf(stderr, "hevcfs: view=%s: expected legacy or native\n", c.view);
		goto out;
	}
	if (c.photo_quality && strcmp(c.photo_quality, "auto")) {
		char *end;
		long q = strtol(c.photo_quality, &end, 10);
		if (*end || q < 1 || q > 100) {
			fprintf(stderr, "hevcfs: photo_quality=%s: expected auto or 1..100\n",
				c.photo_quality);
			goto out;
		}
		cfg.codec.photo_quality = (int)q;
	}
	if (c.view_quality >= 0) {
		if (c.view_quality < 1 || c.view_quality > 100) {
			fprintf(stderr, "hevcfs: view_quality must be 1..100\n");
			goto out;
		}
		cfg.codec.view_quality = c.view_quality;
	}
	if (c.crf >= 0) {
		if (c.crf > 51) {
			fprintf(stderr, "hevcfs: crf must be 0..51\n");
			goto out;
		}
		cfg.codec.crf = c.crf;
	}
	if (c.min_ssim >= 0)
		cfg.codec.min_ssim = c.min_ssim;
	if (c.min_video_ssim >= 0)
		cfg.codec.min_video_ssim = c.min_video_ssim;
	cfg.codec.preset = c.preset;
	cfg.codec.x265_params = c.x265_params;

	/* default_permissions: the kernel checks modes as a local disk does.
	 * The backing path names the mount in /proc/mounts; a comma in it
	 * would split the option list, so it is shown as '_' there. */
	char shown[PATH_MAX];
	snprintf(shown, sizeof(shown), "%s", c.backing);
	for (char *p = shown; *p; p++)
		if (*p == ',')
			*p = '_';
	/* max_threads: libfuse 3.14's fuse_main warns about its own unset
	 * default otherwise; 16 request threads are plenty for 2-8 cores. An
	 * -o max_threads given by the user comes later and wins. */
	snprintf(fsname, sizeof(fsname),
		 "-odefault_permissions,max_threads=16,max_idle_threads=8,subtype=hevcfs,fsname=%s", shown);
	if (fuse_opt_insert_arg(&args, 1, fsname) == -1)
		goto out;
	rc = fs_mount(&cfg, args.argc, args.argv) ? EX_SOFTWARE : EX_OK;
out:
	fuse_opt_free_args(&args);
	free(c.backing);
	free(c.view);
	free(c.photo_quality);
	/* preset and x265_params live in cfg until fs_mount returns */
	free(c.preset);
	free(c.x265_params);
	return rc;
}

/* Read the totals; -ENOENT when BACKING was never mounted. */
static int read_stats(const char *backing, struct idx_stats *st)
{
	char path[PATH_MAX];
	struct idx *idx;
	struct idx_txn *txn;
	int rc;

	snprintf(path, sizeof(path), "%s/%s/index", backing, FS_STATE_DIR);
	rc = idx_open(path, 1, &idx);
	if (rc)
		return rc;
	rc = idx_begin(idx, 0, &txn);
	if (!rc) {
		rc = idx_stats(txn, st);
		idx_abort(txn);
	}
	idx_close(idx);
	return rc;
}

/* Print s as a JSON string. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* One file of `status --files`. */
static int print_file(void *arg, const char *logical, const char *stored,
		      const struct idx_entry *e)
{
	int *json = arg;
	static int first = 1;
	struct idx_entry none = {0};

	if (!e)
		e = &none;
	if (*json) {
		printf("%s{\"path\":", first ? "" : ",");
		json_str(logical);
		printf(",\"stored\":");
		json_str(stored);
		printf(",\"state\":\"%s\",\"bytes_original\":%llu,\"bytes_stored\":%llu,"
		       "\"view_bytes\":%llu,\"quality\":%u,\"ssim\":%.5f,\"view_ssim\":%.5f,"
		       "\"reason\":",
		       e->state ? idx_state_name(e->state) : "unindexed",
		       (unsigned long long)e->orig_bytes, (unsigned long long)e->stored_bytes,
		       (unsigned long long)e->view_bytes, e->quality, e->ssim, e->view_ssim);
		json_str(e->reason);
		putchar('}');
	} else {
		printf("%-9s %12llu %12llu", e->state ? idx_state_name(e->state) : "unindexed",
		       (unsigned long long)e->orig_bytes, (unsigned long long)e->stored_bytes);
		if (e->state == IDX_ARCHIVED)
			printf("  q%-3u ssim %.4f", e->quality, e->ssim);
		else
			printf("  %-15s", "");
		printf("  %s", logical);
		if (e->reason[0])
			printf("  (%s)", e->reason);
		putchar('\n');
	}
	first = 0;
	return 0;
}

/* Running jobs (queued files with progress), for status. */
struct running {
	struct idx_txn *txn;
	int json, n;
};

static int print_running(void *arg, uint64_t ino, uint64_t gen, const char *path)
{
	struct running *r = arg;
	struct idx_entry e;

	(void)gen;
	if (idx_get(r->txn, ino, &e) || e.total == 0)
		return 0;
	if (r->json) {
		printf("%s{\"path\":", r->n ? "," : "");
		json_str(path);
		printf(",\"done\":%llu,\"total\":%llu,\"fps\":%.1f}", (unsigned long long)e.done,
		       (unsigned long long)e.total, e.fps);
	} else {
		double eta = e.fps > 0 ? (double)(e.total - (e.done < e.total ? e.done : e.total)) / e.fps : 0;
		printf("  running   %s: %llu/%llu frames, %.1f fps, about %.0f s left\n", path,
		       (unsigned long long)e.done, (unsigned long long)e.total, e.fps, eta);
	}
	r->n++;
	return 0;
}

/* The running list, read in its own transaction. */
static void show_running(const char *backing, int json)
{
	char path[PATH_MAX];
	struct running r = {.json = json};
	struct idx *idx;

	snprintf(path, sizeof(path), "%s/%s/index", backing, FS_STATE_DIR);
	if (idx_open(path, 1, &idx))
		return;
	if (idx_begin(idx, 0, &r.txn) == 0) {
		idx_queue_each(r.txn, print_running, &r);
		idx_abort(r.txn);
	}
	idx_close(idx);
}

static int cmd_status(int argc, char *argv[])
{
	struct idx_stats st;
	const char *backing = NULL;
	int json = 0, files = 0, rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = 1;
		else if (!strcmp(argv[i], "--files"))
			files = 1;
		else if (!backing && argv[i][0] != '-')
			backing = argv[i];
		else {
			fprintf(stderr, "hevcfs status: unexpected %s\n%s", argv[i], usage_text);
			return EX_USAGE;
		}
	}
	if (!backing) {
		fprintf(stderr, "hevcfs status: missing BACKING\n%s", usage_text);
		return EX_USAGE;
	}
	rc = read_stats(backing, &st);
	if (rc == -ENOENT) {
		memset(&st, 0, sizeof(st));
	} else if (rc) {
		fprintf(stderr, "hevcfs status: %s: %s\n", backing, strerror(-rc));
		return EX_NOINPUT;
	}
	int mounted = fs_is_mounted(backing);
	if (json) {
		printf("{\"files\":%llu,\"staged\":%llu,\"pending\":%llu,\"archived\":%llu,"
		       "\"kept\":%llu,\"failed\":%llu,\"bytes_original\":%llu,"
		       "\"bytes_stored\":%llu,\"queue\":%llu,\"mounted\":%s,\"running\":[",
		       (unsigned long long)st.files, (unsigned long long)st.by_state[IDX_STAGED],
		       (unsigned long long)st.by_state[IDX_PENDING],
		       (unsigned long long)st.by_state[IDX_ARCHIVED],
		       (unsigned long long)st.by_state[IDX_KEPT],
		       (unsigned long long)st.by_state[IDX_FAILED],
		       (unsigned long long)st.bytes_original, (unsigned long long)st.bytes_stored,
		       (unsigned long long)st.queued, mounted ? "true" : "false");
		show_running(backing, 1);
		printf("]");
		if (files) {
			printf(",\"entries\":[");
			fs_list(backing, print_file, &json);
			printf("]");
		}
		printf("}\n");
		return EX_OK;
	}
	printf("%s (%s)\n", backing, mounted ? "mounted" : "not mounted");
	printf("  files     %llu\n", (unsigned long long)st.files);
	for (int s = IDX_STAGED; s < IDX_NSTATES; s++)
		printf("  %-9s %llu\n", idx_state_name(s), (unsigned long long)st.by_state[s]);
	printf("  written   %llu bytes\n  stored    %llu bytes", (unsigned long long)st.bytes_original,
	       (unsigned long long)st.bytes_stored);
	if (st.bytes_original)
		printf(" (%.1f%%)", 100.0 * (double)st.bytes_stored / (double)st.bytes_original);
	printf("\n  queue     %llu\n", (unsigned long long)st.queued);
	show_running(backing, 0);
	if (files) {
		printf("\n%-9s %12s %12s\n", "state", "written", "stored");
		fs_list(backing, print_file, &json);
	}
	return EX_OK;
}

static int cmd_wait(int argc, char *argv[])
{
	const char *backing = NULL;
	double timeout = -1;
	struct timespec t0, now;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
			char *end;
			timeout = strtod(argv[++i], &end);
			if (*end || timeout < 0) {
				fprintf(stderr, "hevcfs wait: bad --timeout %s\n", argv[i]);
				return EX_USAGE;
			}
		} else if (!backing && argv[i][0] != '-') {
			backing = argv[i];
		} else {
			fprintf(stderr, "hevcfs wait: unexpected %s\n%s", argv[i], usage_text);
			return EX_USAGE;
		}
	}
	if (!backing) {
		fprintf(stderr, "hevcfs wait: missing BACKING\n%s", usage_text);
		return EX_USAGE;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct idx_stats st;
		int rc = read_stats(backing, &st);
		if (rc && rc != -ENOENT) {
			fprintf(stderr, "hevcfs wait: %s: %s\n", backing, strerror(-rc));
			return EX_NOINPUT;
		}
		if (rc == -ENOENT || (st.queued == 0 && st.by_state[IDX_STAGED] == 0 &&
				      st.by_state[IDX_PENDING] == 0))
			return 0;
		if (!fs_is_mounted(backing)) {
			fprintf(stderr,
				"hevcfs wait: %s is not mounted: %llu staged, %llu pending wait "
				"for the next mount\n",
				backing, (unsigned long long)st.by_state[IDX_STAGED],
				(unsigned long long)st.by_state[IDX_PENDING]);
			return EX_UNAVAILABLE;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		double el = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
		if (timeout >= 0 && el >= timeout) {
			fprintf(stderr, "hevcfs wait: timed out: %llu staged, %llu pending\n",
				(unsigned long long)st.by_state[IDX_STAGED],
				(unsigned long long)st.by_state[IDX_PENDING]);
			return 1;
		}
		usleep(100000);
	}
}

static int cmd_fsck(int argc, char *argv[])
{
	const char *backing = NULL;
	int rebuild = 0, rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--rebuild"))
			rebuild = 1;
		else if (!backing && argv[i][0] != '-')
			backing = argv[i];
		else {
			fprintf(stderr, "hevcfs fsck: unexpected %s\n%s", argv[i], usage_text);
			return EX_USAGE;
		}
	}
	if (!backing) {
		fprintf(stderr, "hevcfs fsck: missing BACKING\n%s", usage_text);
		return EX_USAGE;
	}
	argv[1] = (char *)backing;
	rc = rebuild ? fs_rebuild(backing) : fs_recover(backing);
	if (rc == -EBUSY) {
		fprintf(stderr, "hevcfs fsck: %s is mounted: unmount it first\n", argv[1]);
		return EX_TEMPFAIL;
	}
	if (rc) {
		fprintf(stderr, "hevcfs fsck: %s: %s\n", argv[1], strerror(-rc));
		return EX_SOFTWARE;
	}
	printf("%s: consistent\n", argv[1]);
	return EX_OK;
}

/* TurboJPEG reads TJ_* variables (progressive, restart, optimise) from the
 * environment: they would change the bytes of rendered views after their
 * sizes were recorded. */
static void clean_environment(void)
{
	extern char **environ;

	for (int i = 0; environ[i];) {
		if (!strncmp(environ[i], "TJ_", 3)) {
			char name[64];
			size_t n = strcspn(environ[i], "=");
			snprintf(name, sizeof(name), "%.*s", (int)(n < 63 ? n : 63), environ[i]);
			unsetenv(name);
		} else {
			i++;
		}
	}
}

int main(int argc, char *argv[])
{
	clean_environment();
	if (argc >= 2 && !strcmp(argv[1], "__archive"))
		return fs_archive_child(argc, argv);
	if (argc < 2) {
		fprintf(stderr, "%s", usage_text);
		return EX_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		printf("%s%s", usage_text, help_text);
		return EX_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf("hevcfs %s (libfuse %d)\n", HEVCFS_VERSION, fuse_version());
		return EX_OK;
	}
	if (!strcmp(argv[1], "status"))
		return cmd_status(argc - 1, argv + 1);
	if (!strcmp(argv[1], "wait"))
		return cmd_wait(argc - 1, argv + 1);
	if (!strcmp(argv[1], "fsck"))
		return cmd_fsck(argc - 1, argv + 1);
	if (!strcmp(argv[1], "mount")) {
		argv[1] = argv[0];
		return cmd_mount(argc - 1, argv + 1);
	}
	return cmd_mount(argc, argv);
}
