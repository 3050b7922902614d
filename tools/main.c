/*
 * hevcfs — the program: mount, status, wait, fsck, verify, config, import,
 * export. Argument parsing and reporting only; the filesystem lives in fs/,
 * the index in index/.
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
#include <unistd.h>

#include "tools.h"

const char usage_text[] =
    "usage: hevcfs BACKING MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]]\n"
    "       hevcfs mount BACKING MOUNTPOINT [...]\n"
    "       hevcfs status BACKING [--json] [--files] [--watch]\n"
    "       hevcfs wait BACKING [--timeout SECONDS]\n"
    "       hevcfs verify BACKING [PATH...] [--rate MB/s] [--json]\n"
    "       hevcfs fsck BACKING [--rebuild]\n"
    "       hevcfs config BACKING [KEY=VALUE...]\n"
    "       hevcfs import SRC... BACKING [--into DIR] [--dry-run] [--shard K/N] [--jobs N]\n"
    "       hevcfs export BACKING DEST [PATH...] [--view=legacy|native] [--jobs N]\n"
    "       hevcfs --help | --version\n"
    "Every command but the mount takes --state DIR (or -o state=DIR) when BACKING\n"
    "keeps its state on a local directory.\n";

static const char help_text[] =
    "\n"
    "hevcfs keeps every file written to MOUNTPOINT on BACKING at once, then in\n"
    "the background stores JPEG photos as HEIC and videos as HEVC MP4, and\n"
    "reads them back under their original names (photos as JPEG).\n"
    "\n"
    "Commands:\n"
    "  (mount)   mount BACKING on MOUNTPOINT (daemonizes unless -f)\n"
    "  status    counts and bytes by state and kind, space saved, kept files by\n"
    "            reason, running jobs with progress and ETA; --files: each file;\n"
    "            --json: one JSON object; --watch: refresh every second\n"
    "  wait      return 0 once nothing is staged or pending, 1 on timeout\n"
    "            (69 at once when BACKING is not mounted and work is waiting)\n"
    "  verify    re-read every stored file (or those named), check its checksum and\n"
    "            decode it whole; exit 0 only if all is well; --rate MB/s throttles\n"
    "            it; interrupted, the next run goes on where it stopped\n"
    "  fsck      finish or roll back interrupted work, index files it does not know;\n"
    "            --rebuild: a new index from the backing tree alone\n"
    "  config    show the options BACKING was first mounted with (its defaults),\n"
    "            or set them\n"
    "  import    archive SRC files and folders into BACKING without a mount\n"
    "            (resumable; --dry-run estimates the saving from a sample;\n"
    "            --shard K/N does the K-th of N shares, for N machines at once,\n"
    "            leaving the index to `hevcfs fsck --rebuild`)\n"
    "  export    write BACKING's tree out to DEST as the mount shows it (legacy:\n"
    "            photos as JPEG views) or as stored (native), checksums checked\n"
    "\n"
    "Mount options (-o); the first mount's are saved as BACKING's defaults:\n"
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
    "  verify_reads=on|off  check every read against the stored checksums (on)\n"
    "  scrub_days=N       scrub in the background, each file every N days (off)\n"
    "  state=DIR          keep the index, lock, log and cache in DIR (a local\n"
    "                     directory: required when BACKING is on NFS/CIFS/FUSE)\n"
    "  heic_view=jpeg|off HEIF photos also show a read-only JPEG X.HEIC.jpg (off)\n"
    "  max_nodes=N        files the kernel keeps looked up before the oldest are\n"
    "                     forgotten (0: by the descriptor limit, at most 65536)\n"
    "  splice=on|off      move data through /dev/fuse with splice (on); off, the\n"
    "                     daemon's writes are plain writes a trace shows whole\n"
    "  readahead_kb=N     how far the kernel reads ahead of a sequential reader\n"
    "                     (1024, at most 1024; needs root; 0: the kernel's 128)\n"
    "  Standard FUSE options pass through (allow_other, ro, ...);\n"
    "  default_permissions is always on.\n";

/* What the mount's argument parsing collects. */
struct mount_cli {
	char *backing;
	int nonopts;
	char given[4096]; /* hevcfs's own options given, "k=v,k=v" */
	int bad;
	int foreground;
};

/* Take BACKING (the first non-option) and hevcfs's own options for
 * ourselves; the rest goes to FUSE. */
static int mount_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct mount_cli *c = data;

	(void)out;
	if (key == FUSE_OPT_KEY_NONOPT && c->nonopts++ == 0) {
		c->backing = strdup(arg);
		return c->backing ? 0 : -1;
	}
	if (key == FUSE_OPT_KEY_OPT && opt_is_own(arg)) {
		size_t n = strlen(c->given);
		if (n + strlen(arg) + 2 > sizeof(c->given)) {
			c->bad = 1;
			return 0;
		}
		snprintf(c->given + n, sizeof(c->given) - n, "%s%s", n ? "," : "", arg);
		return 0;
	}
	if (key == FUSE_OPT_KEY_OPT && !strcmp(arg, "-f"))
		c->foreground = 1;
	return 1;
}

/* Apply each "k=v" of a comma-separated list to cfg, except the keys skip
 * sets (the options given on the command line win over the saved ones). */
static int apply_list(struct fs_config *cfg, const char *list, const char *skip)
{
	char *copy = strdup(list), *save = NULL, err[256];
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (char *kv = strtok_r(copy, ",", &save); kv && !rc; kv = strtok_r(NULL, ",", &save)) {
		char key[32];
		snprintf(key, sizeof(key), "%.*s", (int)strcspn(kv, "="), kv);
		if (skip && opt_has(skip, key))
			continue;
		rc = opt_apply(cfg, kv, err, sizeof(err));
		if (rc)
			fprintf(stderr, "hevcfs: %s\n", err);
	}
	free(copy);
	return rc;
}

/* The options to save as BACKING's defaults: the given ones but state and
 * splice (facts of this machine and this mount, not of the archive). */
static void saveable(const char *given, char *out, size_t size)
{
	char *copy = strdup(given), *save = NULL;
	size_t n = 0;

	out[0] = '\0';
	if (!copy)
		return;
	for (char *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save))
		if (strncmp(kv, "state=", 6) && strncmp(kv, "splice=", 7) &&
		    n + strlen(kv) + 2 < size)
			n += (size_t)snprintf(out + n, size - n, "%s%s", n ? "," : "", kv);
	free(copy);
}

static int cmd_mount(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fs_config cfg;
	struct fs_paths paths = {0};
	struct mount_cli c = {0};
	char fsname[PATH_MAX + 128], saved[4096], err[PATH_MAX + 256];
	int rc = EX_USAGE, have_saved;

	if (fuse_opt_parse(&args, &c, NULL, mount_proc) == -1)
		goto out;
	if (c.nonopts < 2) {
		fprintf(stderr, "hevcfs: %s\n%s",
			c.nonopts ? "missing MOUNTPOINT" : "missing BACKING", usage_text);
		goto out;
	}
	if (c.bad) {
		fprintf(stderr, "hevcfs: too many options\n");
		goto out;
	}
	fs_config_init(&cfg);
	cfg.foreground = c.foreground;
	/* the options are checked before anything is made */
	if (apply_list(&cfg, c.given, NULL))
		goto out;
	rc = fs_paths_open(c.backing, cfg.state, 1, &paths, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "hevcfs: %s\n", err);
		rc = rc == -ENOENT ? EX_NOINPUT : rc == -EACCES ? EX_NOPERM : EX_CONFIG;
		goto out;
	}
	rc = EX_CONFIG;
	/* the options BACKING was first mounted with are its defaults; the
	 * first mount saves the ones it was given */
	have_saved = opt_load(&paths, saved, sizeof(saved)) == 0;
	if (have_saved) {
		fs_config_init(&cfg);
		cfg.foreground = c.foreground;
		if (apply_list(&cfg, saved, c.given) || apply_list(&cfg, c.given, NULL))
			goto out;
	} else {
		saveable(c.given, saved, sizeof(saved));
		if (opt_save(&paths, saved))
			fprintf(stderr, "hevcfs: warning: the options could not be saved\n");
	}
	cfg.backing = paths.backing;

	/* default_permissions: the kernel checks modes as a local disk does.
	 * The backing path names the mount in /proc/mounts; a comma in it
	 * would split the option list, so it is shown as '_' there. */
	char shown[PATH_MAX];
	snprintf(shown, sizeof(shown), "%s", paths.backing);
	for (char *p = shown; *p; p++)
		if (*p == ',')
			*p = '_';
	/* max_threads: libfuse 3.14's fuse_main warns about its own unset
	 * default otherwise; 16 request threads are plenty for 2-8 cores. An
	 * -o max_threads given by the user comes later and wins. */
	snprintf(fsname, sizeof(fsname),
		 "-odefault_permissions,max_threads=16,max_idle_threads=8,subtype=hevcfs,fsname=%s",
		 shown);
	if (fuse_opt_insert_arg(&args, 1, fsname) == -1)
		goto out;
	rc = fs_mount(&cfg, &paths, args.argc, args.argv) ? EX_SOFTWARE : EX_OK;
out:
	fuse_opt_free_args(&args);
	fs_paths_release(&paths);
	free(c.backing);
	return rc;
}

int cmd_parse(const char *cmd, int argc, char *argv[], struct cmd_args *a,
	      int (*flag)(void *arg, int argc, char *argv[]), void *arg)
{
	memset(a, 0, sizeof(*a));
	a->rest = calloc((size_t)argc + 1, sizeof(*a->rest));
	if (!a->rest)
		return EX_OSERR;
	for (int i = 1; i < argc; i++) {
		int took = flag ? flag(arg, argc - i, argv + i) : 0;
		if (took < 0)
			return EX_USAGE;
		if (took > 0) {
			i += took - 1;
		} else if (!strcmp(argv[i], "--state") && i + 1 < argc) {
			a->state = argv[++i];
		} else if (!strncmp(argv[i], "--state=", 8)) {
			a->state = argv[i] + 8;
		} else if (!strcmp(argv[i], "-o") && i + 1 < argc &&
			   !strncmp(argv[i + 1], "state=", 6)) {
			a->state = argv[++i] + 6;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "hevcfs %s: unexpected %s\n%s", cmd, argv[i], usage_text);
			return EX_USAGE;
		} else if (!a->backing) {
			a->backing = argv[i];
		} else {
			a->rest[a->nrest++] = argv[i];
		}
	}
	if (!a->backing) {
		fprintf(stderr, "hevcfs %s: missing BACKING\n%s", cmd, usage_text);
		return EX_USAGE;
	}
	return 0;
}

int cmd_paths(const char *cmd, const struct cmd_args *a, int create, struct fs_paths *p)
{
	char err[PATH_MAX + 256];
	int rc = fs_paths_open(a->backing, a->state, create, p, err, sizeof(err));

	if (!rc)
		return 0;
	fprintf(stderr, "hevcfs %s: %s\n", cmd, err);
	return rc == -ENOENT ? EX_NOINPUT : rc == -EACCES ? EX_NOPERM : EX_CONFIG;
}

/* fsck's own flag. */
static int fsck_flag(void *arg, int argc, char *argv[])
{
	(void)argc;
	if (strcmp(argv[0], "--rebuild"))
		return 0;
	*(int *)arg = 1;
	return 1;
}

static int cmd_fsck(int argc, char *argv[])
{
	struct cmd_args a;
	struct fs_paths p;
	int rebuild = 0, rc;

	rc = cmd_parse("fsck", argc, argv, &a, fsck_flag, &rebuild);
	if (!rc && a.nrest) {
		fprintf(stderr, "hevcfs fsck: unexpected %s\n", a.rest[0]);
		rc = EX_USAGE;
	}
	if (!rc)
		rc = cmd_paths("fsck", &a, 1, &p);
	free(a.rest);
	if (rc)
		return rc;
	rc = rebuild ? fs_rebuild(&p) : fs_recover(&p);
	if (rc == -EBUSY) {
		fprintf(stderr, "hevcfs fsck: %s is mounted: unmount it first\n", p.backing);
		rc = EX_TEMPFAIL;
	} else if (rc) {
		fprintf(stderr, "hevcfs fsck: %s: %s\n", p.backing, strerror(-rc));
		rc = EX_SOFTWARE;
	} else {
		printf("%s: consistent\n", p.backing);
	}
	fs_paths_release(&p);
	return rc;
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

/* The commands besides the mount. */
static const struct {
	const char *name;
	int (*run)(int argc, char *argv[]);
} commands[] = {
    {"status", cmd_status}, {"wait", cmd_wait},	    {"fsck", cmd_fsck},	    {"verify", cmd_verify},
    {"config", cmd_config}, {"import", cmd_import}, {"export", cmd_export},
};

/* HEVCFS_LOG_LEVEL (error, warning, info, debug) sets how much is logged:
 * the commands that run archive children quiet them this way. */
static void log_level_from_env(void)
{
	static const struct {
		const char *name;
		int level;
	} levels[] = {
	    {"error", LOG_ERR}, {"warning", LOG_WARNING}, {"info", LOG_INFO}, {"debug", LOG_DEBUG}};
	const char *v = getenv("HEVCFS_LOG_LEVEL");

	for (size_t i = 0; v && i < sizeof(levels) / sizeof(*levels); i++)
		if (!strcmp(v, levels[i].name))
			log_set_level(levels[i].level);
}

int main(int argc, char *argv[])
{
	int rc;

	clean_environment();
	log_level_from_env();
	if (argc >= 2 && !strcmp(argv[1], "__archive"))
		return fs_archive_child(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "__check"))
		return fs_check_child(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "__render"))
		return fs_render_child(argc, argv);
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
	for (size_t i = 0; i < sizeof(commands) / sizeof(*commands); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].run(argc - 1, argv + 1);
	if (!strcmp(argv[1], "mount")) {
		argv[1] = argv[0];
		rc = cmd_mount(argc - 1, argv + 1);
	} else {
		rc = cmd_mount(argc, argv);
	}
	opt_release();
	return rc;
}
