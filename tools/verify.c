/* verify — `hevcfs verify BACKING [PATH...]`: the scrub's report. A progress
 * bar on a terminal, plain lines when piped, one JSON object with --json;
 * every damaged file named by its logical path with what failed. Exit status
 * 0 only when everything checked is whole. */
#include "tools.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

/* Exit status of a run stopped by the user (128 + SIGINT, as a shell says). */
#define EXIT_INTERRUPTED 130

static atomic_int stop;

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop, 1);
}

struct verify {
	int json;
	double rate;
	/* damaged files, for the JSON report */
	char **bad;
	char **bad_what;
	size_t nbad;
	int first_json;
};

static int verify_flag(void *arg, int argc, char *argv[])
{
	struct verify *v = arg;
	char *end;

	if (!strcmp(argv[0], "--json")) {
		v->json = 1;
		return 1;
	}
	if (!strcmp(argv[0], "--rate") || !strncmp(argv[0], "--rate=", 7)) {
		const char *val = argv[0][6] == '=' ? argv[0] + 7 : argc > 1 ? argv[1] : NULL;
		if (!val) {
			fprintf(stderr, "hevcfs verify: --rate needs MB/s\n");
			return -1;
		}
		v->rate = strtod(val, &end);
		if (*end || !(v->rate > 0)) {
			fprintf(stderr, "hevcfs verify: bad --rate %s (MB/s)\n", val);
			return -1;
		}
		return argv[0][6] == '=' ? 1 : 2;
	}
	return 0;
}

/* A progress line: files, bytes, speed, time left. */
static void show_progress(void *arg, const struct fs_scrub_totals *t, const char *path)
{
	struct verify *v = arg;
	char bar[40], a[32], b[32], eta[32];
	uint64_t seen = t->bytes + t->bytes_before;
	double frac = t->bytes_total ? (double)seen / (double)t->bytes_total : 0;
	double speed = t->seconds > 0 ? (double)t->bytes / t->seconds : 0;

	if (v->json)
		return;
	if (frac > 1)
		frac = 1;
	progress_bar(bar, 24, frac);
	if (t->bytes_total && speed > 0)
		human_time(
		    (double)(t->bytes_total - (seen < t->bytes_total ? seen : t->bytes_total)) /
			speed,
		    eta, sizeof(eta));
	else
		snprintf(eta, sizeof(eta), "?");
	progress_line(0, "%s %3.0f%%  %llu/%llu files  %s/%s  %.0f MB/s  %s left  %.60s", bar,
		      100 * frac, (unsigned long long)(t->files + t->files_before),
		      (unsigned long long)t->files_total, human_bytes(seen, a, sizeof(a)),
		      human_bytes(t->bytes_total, b, sizeof(b)), speed / 1e6, eta,
		      path ? path : "");
}

static void on_file(void *arg, const struct fs_scrub_file *f, const struct fs_scrub_totals *t)
{
	struct verify *v = arg;

	if (f->outcome == FS_SCRUB_DAMAGED || f->outcome == FS_SCRUB_ERROR) {
		if (v->json) {
			char **b = realloc(v->bad, (v->nbad + 1) * sizeof(*b));
			char **w = realloc(v->bad_what, (v->nbad + 1) * sizeof(*w));
			if (b)
				v->bad = b;
			if (w)
				v->bad_what = w;
			if (b && w) {
				v->bad[v->nbad] = strdup(f->path);
				v->bad_what[v->nbad++] = strdup(f->what);
			}
		} else {
			progress_done();
			printf("%s: %s: %s\n", f->outcome == FS_SCRUB_DAMAGED ? "DAMAGED" : "ERROR",
			       f->path, f->what);
		}
	}
	show_progress(arg, t, f->path);
}

int cmd_verify(int argc, char *argv[])
{
	struct verify v = {0};
	struct cmd_args a;
	struct fs_paths p;
	struct fs_scrub s = {0};
	struct fs_scrub_totals t;
	struct fs_config cfg;
	char saved[4096], a1[32];
	struct sigaction sa = {.sa_handler = on_signal};
	int rc;

	rc = cmd_parse("verify", argc, argv, &a, verify_flag, &v);
	if (!rc)
		rc = cmd_paths("verify", &a, 0, &p);
	if (rc) {
		free(a.rest);
		return rc;
	}
	/* the codec options the archive was made with (the view quality of
	 * old archives, the decoder's threads) */
	fs_config_init(&cfg);
	if (opt_load(&p, saved, sizeof(saved)) == 0) {
		char err[256], *save = NULL;
		for (char *kv = strtok_r(saved, ",", &save); kv; kv = strtok_r(NULL, ",", &save))
			opt_apply(&cfg, kv, err, sizeof(err)); /* saved: checked already */
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);	  /* lines as they come, also into a pipe */
	setenv("HEVCFS_LOG_LEVEL", "warning", 0); /* the decode children too */
	log_set_level(LOG_WARNING);
	s.paths = &p;
	s.only = a.rest;
	s.nonly = a.nrest;
	s.rate_mb = v.rate;
	s.stop = &stop;
	s.codec = &cfg.codec;
	s.report = on_file;
	s.progress = show_progress;
	s.arg = &v;
	rc = fs_scrub(&s, &t);
	progress_done();
	if (rc && rc != -EINTR) {
		fprintf(stderr, "hevcfs verify: %s: %s\n", p.backing, strerror(-rc));
		rc = EX_NOINPUT;
		goto out;
	}
	if (v.json) {
		printf("{\"ok\":%s,\"interrupted\":%s,\"resumed\":%s,\"files\":%llu,\"bytes\":%llu,"
		       "\"damaged\":%llu,\"learnt\":%llu,\"skipped\":%llu,\"errors\":%llu,"
		       "\"seconds\":%.2f,\"mb_per_s\":%.1f,\"damaged_files\":[",
		       !t.damaged && !t.errors && rc != -EINTR ? "true" : "false",
		       rc == -EINTR ? "true" : "false", t.resumed ? "true" : "false",
		       (unsigned long long)t.files, (unsigned long long)t.bytes,
		       (unsigned long long)t.damaged, (unsigned long long)t.learnt,
		       (unsigned long long)t.skipped, (unsigned long long)t.errors, t.seconds,
		       t.seconds > 0 ? (double)t.bytes / t.seconds / 1e6 : 0.0);
		for (size_t i = 0; i < v.nbad; i++) {
			printf("%s{\"path\":", i ? "," : "");
			json_str(stdout, v.bad[i] ? v.bad[i] : "");
			printf(",\"what\":");
			json_str(stdout, v.bad_what[i] ? v.bad_what[i] : "");
			printf("}");
		}
		printf("]}\n");
	} else {
		printf("%s%llu file(s), %s checked in %.1f s (%.0f MB/s): %llu damaged",
		       t.resumed ? "(went on with an interrupted run) " : "",
		       (unsigned long long)t.files, human_bytes(t.bytes, a1, sizeof(a1)), t.seconds,
		       t.seconds > 0 ? (double)t.bytes / t.seconds / 1e6 : 0.0,
		       (unsigned long long)t.damaged);
		if (t.learnt)
			printf(", %llu checksum(s) recorded for the first time",
			       (unsigned long long)t.learnt);
		if (t.skipped)
			printf(", %llu skipped (not at rest)", (unsigned long long)t.skipped);
		if (t.errors)
			printf(", %llu could not be checked", (unsigned long long)t.errors);
		printf("\n");
		if (rc == -EINTR)
			printf("interrupted: run hevcfs verify again to go on where it stopped\n");
	}
	rc = rc == -EINTR ? EXIT_INTERRUPTED : t.damaged || t.errors ? 1 : EX_OK;
out:
	for (size_t i = 0; i < v.nbad; i++) {
		free(v.bad[i]);
		free(v.bad_what[i]);
	}
	free(v.bad);
	free(v.bad_what);
	free(a.rest);
	fs_paths_release(&p);
	opt_release();
	return rc;
}
