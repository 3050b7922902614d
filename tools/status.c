/* status — what an archive holds and what it is doing (`hevcfs status`),
 * waiting for it to be done (`hevcfs wait`), and its saved options
 * (`hevcfs config`). Read from the index, mounted or not. */
#include "tools.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

/* Seconds a byte of original took to archive, over recent jobs
 * (fs/queue.c keeps it). */
#define RATE_KEY "rate"

/* A running job, for the report. */
struct job_view {
	char *path;
	struct idx_entry e;
};

/* Everything one report shows, read in one transaction. */
struct report {
	struct idx_stats st;
	struct {
		char group[160];
		struct idx_count c;
	} reasons[64];
	int nreasons;
	struct job_view jobs[64];
	int njobs;
	uint64_t pending_bytes; /* staged and pending, not running */
	double rate;		/* seconds per byte (0: not known yet) */
	int workers;
	int mounted;
};

static int add_reason(void *arg, const char *group, const struct idx_count *c)
{
	struct report *r = arg;

	if (r->nreasons == (int)(sizeof(r->reasons) / sizeof(*r->reasons)))
		return 1;
	snprintf(r->reasons[r->nreasons].group, sizeof(r->reasons[0].group), "%s", group);
	r->reasons[r->nreasons++].c = *c;
	return 0;
}

/* The queue: running jobs (started, or with frames done) are listed. */
struct queue_walk {
	struct report *r;
	struct idx_txn *txn;
};

static int add_job(void *arg, uint64_t ino, uint64_t gen, const char *path)
{
	struct queue_walk *w = arg;
	struct report *r = w->r;
	struct idx_entry e;

	(void)gen;
	if (idx_get(w->txn, ino, &e))
		return 0;
	if (e.state == IDX_PENDING && (e.started || e.total)) {
		if (r->njobs < (int)(sizeof(r->jobs) / sizeof(*r->jobs))) {
			r->jobs[r->njobs].path = strdup(path);
			r->jobs[r->njobs++].e = e;
		}
	} else if (e.state == IDX_PENDING || e.state == IDX_STAGED) {
		r->pending_bytes += e.orig_bytes;
	}
	return 0;
}

static void report_release(struct report *r)
{
	for (int i = 0; i < r->njobs; i++)
		free(r->jobs[i].path);
	r->njobs = 0;
}

/* Read r from p's index. 0, -ENOENT (never mounted), -errno. */
static int report_read(const struct fs_paths *p, struct report *r)
{
	struct idx *idx;
	struct idx_txn *txn;
	char buf[64];
	size_t len;
	int rc;

	memset(r, 0, sizeof(*r));
	r->mounted = fs_is_mounted(p);
	rc = fs_index_open(p, 1, &idx);
	if (rc)
		return rc;
	rc = idx_begin(idx, 0, &txn);
	if (!rc) {
		struct queue_walk w = {r, txn};
		rc = idx_stats(txn, &r->st);
		if (!rc)
			rc = idx_reasons_each(txn, add_reason, r);
		/* the queue is walked only while it is short: a long one is
		 * all pending, and its bytes are in the totals */
		if (!rc && r->st.queued <= 10000)
			rc = idx_queue_each(txn, add_job, &w);
		else
			r->pending_bytes = r->st.by[IDX_PENDING][0].bytes_original +
					   r->st.by[IDX_STAGED][0].bytes_original;
		if (!rc && idx_meta_get(txn, RATE_KEY, buf, sizeof(buf) - 1, &len) == 0) {
			buf[len] = '\0';
			sscanf(buf, "%lf %d", &r->rate, &r->workers);
		}
		idx_abort(txn);
	}
	idx_close(idx);
	return rc;
}

/* Seconds left of a running job (from frames, else the rate), and its
 * share done. */
static double job_eta(const struct report *r, const struct idx_entry *e, double *frac)
{
	double elapsed = e->started ? difftime(time(NULL), (time_t)e->started) : 0;

	if (e->total && e->fps > 0) {
		*frac = (double)e->done / (double)e->total;
		return (double)(e->total - (e->done < e->total ? e->done : e->total)) / e->fps;
	}
	if (r->rate > 0) {
		double expect = r->rate * (double)e->orig_bytes;
		*frac = expect > 0 ? elapsed / expect : 0;
		if (*frac > 0.99)
			*frac = 0.99;
		return expect > elapsed ? expect - elapsed : 1;
	}
	*frac = 0;
	return -1;
}

/* Seconds until nothing is left (running jobs and the queue), -1 when not
 * known. */
static double overall_eta(const struct report *r)
{
	double most = 0, frac;
	int workers = r->workers > 0 ? r->workers : 1;

	if (r->rate <= 0)
		return r->njobs || r->pending_bytes ? -1 : 0;
	for (int i = 0; i < r->njobs; i++) {
		double t = job_eta(r, &r->jobs[i].e, &frac);
		if (t > most)
			most = t;
	}
	return most + r->rate * (double)r->pending_bytes / workers;
}

static const char *kinds[] = {"photo", "video", "other"};
static const int kind_ids[] = {IDX_KIND_PHOTO, IDX_KIND_VIDEO, IDX_KIND_OTHER};

/* Totals of one kind (unknown counts as other). */
static struct idx_count kind_total(const struct idx_stats *st, int k, int state)
{
	struct idx_count c = {0};

	for (int s = state ? state : IDX_STAGED; s <= (state ? state : IDX_NSTATES - 1); s++) {
		const struct idx_count *x = &st->by[s][kind_ids[k]];
		c.files += x->files;
		c.bytes_original += x->bytes_original;
		c.bytes_stored += x->bytes_stored;
		if (kind_ids[k] == IDX_KIND_OTHER) {
			x = &st->by[s][IDX_KIND_UNKNOWN];
			c.files += x->files;
			c.bytes_original += x->bytes_original;
			c.bytes_stored += x->bytes_stored;
		}
	}
	return c;
}

static void print_json(const struct report *r)
{
	const struct idx_stats *st = &r->st;
	struct idx_count ar = {0};
	double eta = overall_eta(r);

	for (int k = 0; k < 3; k++) {
		struct idx_count c = kind_total(st, k, IDX_ARCHIVED);
		ar.bytes_original += c.bytes_original;
		ar.bytes_stored += c.bytes_stored;
	}
	printf("{\"files\":%llu,\"staged\":%llu,\"pending\":%llu,\"archived\":%llu,"
	       "\"kept\":%llu,\"failed\":%llu,\"damaged\":%llu,\"unchecked\":%llu,"
	       "\"bytes_original\":%llu,\"bytes_stored\":%llu,\"bytes_saved\":%llu,"
	       "\"queue\":%llu,\"mounted\":%s,\"eta_s\":%.0f,\"by_kind\":{",
	       (unsigned long long)st->files, (unsigned long long)st->by_state[IDX_STAGED],
	       (unsigned long long)st->by_state[IDX_PENDING],
	       (unsigned long long)st->by_state[IDX_ARCHIVED],
	       (unsigned long long)st->by_state[IDX_KEPT],
	       (unsigned long long)st->by_state[IDX_FAILED], (unsigned long long)st->damaged,
	       (unsigned long long)st->unsummed, (unsigned long long)st->bytes_original,
	       (unsigned long long)st->bytes_stored,
	       (unsigned long long)(ar.bytes_original - ar.bytes_stored),
	       (unsigned long long)st->queued, r->mounted ? "true" : "false", eta);
	for (int k = 0; k < 3; k++) {
		struct idx_count all = kind_total(st, k, 0);
		printf("%s\"%s\":{\"files\":%llu,\"bytes_original\":%llu,\"bytes_stored\":%llu",
		       k ? "," : "", kinds[k], (unsigned long long)all.files,
		       (unsigned long long)all.bytes_original,
		       (unsigned long long)all.bytes_stored);
		for (int s = IDX_STAGED; s < IDX_NSTATES; s++)
			printf(",\"%s\":%llu", idx_state_name(s),
			       (unsigned long long)kind_total(st, k, s).files);
		printf("}");
	}
	printf("},\"kept_by_reason\":[");
	for (int i = 0; i < r->nreasons; i++) {
		printf("%s{\"reason\":", i ? "," : "");
		json_str(stdout, r->reasons[i].group);
		printf(",\"files\":%llu,\"bytes\":%llu}", (unsigned long long)r->reasons[i].c.files,
		       (unsigned long long)r->reasons[i].c.bytes_original);
	}
	printf("],\"running\":[");
	for (int i = 0; i < r->njobs; i++) {
		const struct idx_entry *e = &r->jobs[i].e;
		double frac, left = job_eta(r, e, &frac);
		printf("%s{\"path\":", i ? "," : "");
		json_str(stdout, r->jobs[i].path);
		printf(",\"done\":%llu,\"total\":%llu,\"fps\":%.1f,\"percent\":%.1f,\"eta_s\":%.0f,"
		       "\"elapsed_s\":%.0f,\"bytes\":%llu}",
		       (unsigned long long)e->done, (unsigned long long)e->total, e->fps,
		       100 * frac, left,
		       e->started ? difftime(time(NULL), (time_t)e->started) : 0.0,
		       (unsigned long long)e->orig_bytes);
	}
	printf("]");
}

static void print_text(const char *backing, const struct report *r)
{
	const struct idx_stats *st = &r->st;
	char a[32], b[32], t[32];
	struct idx_count ar = {0};
	double eta = overall_eta(r);

	printf("%s (%s)\n", backing, r->mounted ? "mounted" : "not mounted");
	printf("  %-10s %9s %12s %12s\n", "", "files", "written", "stored");
	for (int s = IDX_STAGED; s < IDX_NSTATES; s++) {
		uint64_t o = 0, sd = 0;
		for (int k = 0; k < IDX_NKINDS; k++) {
			o += st->by[s][k].bytes_original;
			sd += st->by[s][k].bytes_stored;
		}
		printf("  %-10s %9llu %12s %12s\n", idx_state_name(s),
		       (unsigned long long)st->by_state[s], human_bytes(o, a, sizeof(a)),
		       human_bytes(sd, b, sizeof(b)));
	}
	printf("  %-10s %9llu %12s %12s\n", "all", (unsigned long long)st->files,
	       human_bytes(st->bytes_original, a, sizeof(a)),
	       human_bytes(st->bytes_stored, b, sizeof(b)));
	for (int k = 0; k < 3; k++) {
		struct idx_count all = kind_total(st, k, 0), c = kind_total(st, k, IDX_ARCHIVED);
		ar.bytes_original += c.bytes_original;
		ar.bytes_stored += c.bytes_stored;
		printf("  %-10s %9llu %12s %12s   (%llu archived, %llu kept)\n", kinds[k],
		       (unsigned long long)all.files, human_bytes(all.bytes_original, a, sizeof(a)),
		       human_bytes(all.bytes_stored, b, sizeof(b)), (unsigned long long)c.files,
		       (unsigned long long)kind_total(st, k, IDX_KEPT).files);
	}
	printf("  saved      %s", human_bytes(ar.bytes_original - ar.bytes_stored, a, sizeof(a)));
	if (ar.bytes_original)
		printf(" (archived files take %.0f%% of what was written)",
		       100.0 * (double)ar.bytes_stored / (double)ar.bytes_original);
	printf("\n  damaged    %llu", (unsigned long long)st->damaged);
	if (st->damaged)
		printf(" (hevcfs status --files names them; hevcfs verify checks again)");
	if (st->unsummed)
		printf("\n  unchecked  %llu without a checksum yet (hevcfs verify records them)",
		       (unsigned long long)st->unsummed);
	printf("\n");
	if (r->nreasons) {
		printf("  kept, by reason:\n");
		for (int i = 0; i < r->nreasons; i++)
			printf("    %-40s %7llu %12s\n", r->reasons[i].group,
			       (unsigned long long)r->reasons[i].c.files,
			       human_bytes(r->reasons[i].c.bytes_original, a, sizeof(a)));
	}
	printf("  queue      %llu\n", (unsigned long long)st->queued);
	for (int i = 0; i < r->njobs; i++) {
		const struct idx_entry *e = &r->jobs[i].e;
		double frac, left = job_eta(r, e, &frac);
		char bar[32];
		progress_bar(bar, 20, frac);
		printf("  %s %3.0f%% %s", bar, 100 * frac, r->jobs[i].path);
		if (e->total)
			printf("  %llu/%llu frames, %.1f fps", (unsigned long long)e->done,
			       (unsigned long long)e->total, e->fps);
		if (left >= 0)
			printf(", about %s left", human_time(left, t, sizeof(t)));
		printf("\n");
	}
	if (r->njobs || r->pending_bytes)
		printf("  all done   %s\n",
		       eta >= 0 ? human_time(eta, t, sizeof(t)) : "not known yet");
}

/* One file of `status --files`. */
static int print_file(void *arg, const char *logical, const char *stored, const struct idx_entry *e)
{
	int *json = arg;
	static int first = 1;
	struct idx_entry none = {0};
	const char *state;
	char words[128];

	if (!e)
		e = &none;
	state = e->flags & IDX_F_DAMAGED ? "damaged"
		: e->state		 ? idx_state_name(e->state)
					 : "unindexed";
	if (*json) {
		char sum[SUM_HEX], orig[SUM_HEX];
		sum_hex(e->sum, sum);
		sum_hex(e->orig_sum, orig);
		printf("%s{\"path\":", first ? "" : ",");
		json_str(stdout, logical);
		printf(",\"stored\":");
		json_str(stdout, stored);
		printf(",\"state\":\"%s\",\"kind\":\"%s\",\"damaged\":%s,\"sha256\":\"%s\","
		       "\"original_sha256\":\"%s\",\"checked\":%lld,\"carries\":%u,",
		       state, idx_kind_name(e->kind), e->flags & IDX_F_DAMAGED ? "true" : "false",
		       sum_is_zero(e->sum) ? "" : sum, sum_is_zero(e->orig_sum) ? "" : orig,
		       (long long)e->checked, e->carries);
		printf("\"bytes_original\":%llu,\"bytes_stored\":%llu,"
		       "\"view_bytes\":%llu,\"quality\":%u,\"ssim\":%.5f,\"view_ssim\":%.5f,"
		       "\"reason\":",
		       (unsigned long long)e->orig_bytes, (unsigned long long)e->stored_bytes,
		       (unsigned long long)e->view_bytes, e->quality, e->ssim, e->view_ssim);
		json_str(stdout, e->reason);
		printf(",\"carried\":");
		json_str(stdout, codec_carries_words(e->carries, words, sizeof(words)));
		putchar('}');
	} else {
		printf("%-9s %-6s %12llu %12llu", state, idx_kind_name(e->kind),
		       (unsigned long long)e->orig_bytes, (unsigned long long)e->stored_bytes);
		if (e->state == IDX_ARCHIVED)
			printf("  q%-3u ssim %.4f", e->quality, e->ssim);
		else
			printf("  %-15s", "");
		printf("  %s", logical);
		if (e->carries)
			printf("  [with %s]",
			       codec_carries_words(e->carries, words, sizeof(words)));
		if (e->reason[0])
			printf("  (%s)", e->reason);
		putchar('\n');
	}
	first = 0;
	return 0;
}

/* status's own flags. */
struct status_flags {
	int json, files, watch;
};

static int status_flag(void *arg, int argc, char *argv[])
{
	struct status_flags *f = arg;

	(void)argc;
	if (!strcmp(argv[0], "--json"))
		f->json = 1;
	else if (!strcmp(argv[0], "--files"))
		f->files = 1;
	else if (!strcmp(argv[0], "--watch"))
		f->watch = 1;
	else
		return 0;
	return 1;
}

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
	(void)sig;
	interrupted = 1;
}

int cmd_status(int argc, char *argv[])
{
	struct status_flags f = {0};
	struct cmd_args a;
	struct fs_paths p;
	struct report r;
	int rc;

	rc = cmd_parse("status", argc, argv, &a, status_flag, &f);
	if (!rc && a.nrest) {
		fprintf(stderr, "hevcfs status: unexpected %s\n", a.rest[0]);
		rc = EX_USAGE;
	}
	if (!rc)
		rc = cmd_paths("status", &a, 0, &p);
	free(a.rest);
	if (rc)
		return rc;
	if (f.watch && !progress_tty())
		f.watch = 0; /* refreshing in place needs a terminal */
	signal(SIGINT, on_interrupt);
	do {
		rc = report_read(&p, &r);
		if (rc && rc != -ENOENT) {
			fprintf(stderr, "hevcfs status: %s: %s\n", p.backing, strerror(-rc));
			fs_paths_release(&p);
			return EX_NOINPUT;
		}
		if (f.watch)
			printf("\033[H\033[J");
		if (f.json) {
			print_json(&r);
			if (f.files) {
				printf(",\"entries\":[");
				fs_list(&p, print_file, &f.json);
				printf("]");
			}
			printf("}\n");
		} else {
			print_text(p.backing, &r);
			if (f.files) {
				printf("\n%-9s %-6s %12s %12s\n", "state", "kind", "written",
				       "stored");
				fs_list(&p, print_file, &f.json);
			}
		}
		fflush(stdout);
		report_release(&r);
	} while (f.watch && !interrupted && sleep(1) == 0 && !interrupted);
	fs_paths_release(&p);
	return EX_OK;
}

/* wait's own flag. */
static int wait_flag(void *arg, int argc, char *argv[])
{
	double *timeout = arg;
	char *end;

	if (strcmp(argv[0], "--timeout"))
		return 0;
	if (argc < 2) {
		fprintf(stderr, "hevcfs wait: --timeout needs SECONDS\n");
		return -1;
	}
	*timeout = strtod(argv[1], &end);
	if (*end || *timeout < 0) {
		fprintf(stderr, "hevcfs wait: bad --timeout %s\n", argv[1]);
		return -1;
	}
	return 2;
}

int cmd_wait(int argc, char *argv[])
{
	struct cmd_args a;
	struct fs_paths p;
	double timeout = -1;
	struct timespec t0, now;
	int rc;

	rc = cmd_parse("wait", argc, argv, &a, wait_flag, &timeout);
	if (!rc && a.nrest) {
		fprintf(stderr, "hevcfs wait: unexpected %s\n", a.rest[0]);
		rc = EX_USAGE;
	}
	if (!rc)
		rc = cmd_paths("wait", &a, 0, &p);
	free(a.rest);
	if (rc == EX_NOINPUT)
		return 0; /* never mounted: nothing waits */
	if (rc)
		return rc;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct idx_stats st;
		struct idx *idx;
		struct idx_txn *txn;

		rc = fs_index_open(&p, 1, &idx);
		if (!rc) {
			rc = idx_begin(idx, 0, &txn);
			if (!rc) {
				rc = idx_stats(txn, &st);
				idx_abort(txn);
			}
			idx_close(idx);
		}
		if (rc && rc != -ENOENT) {
			fprintf(stderr, "hevcfs wait: %s: %s\n", p.backing, strerror(-rc));
			rc = EX_NOINPUT;
			break;
		}
		if (rc == -ENOENT || (st.queued == 0 && st.by_state[IDX_STAGED] == 0 &&
				      st.by_state[IDX_PENDING] == 0)) {
			rc = 0;
			break;
		}
		if (!fs_is_mounted(&p)) {
			fprintf(stderr,
				"hevcfs wait: %s is not mounted: %llu staged, %llu pending wait "
				"for the next mount\n",
				p.backing, (unsigned long long)st.by_state[IDX_STAGED],
				(unsigned long long)st.by_state[IDX_PENDING]);
			rc = EX_UNAVAILABLE;
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		double el =
		    (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
		if (timeout >= 0 && el >= timeout) {
			fprintf(stderr, "hevcfs wait: timed out: %llu staged, %llu pending\n",
				(unsigned long long)st.by_state[IDX_STAGED],
				(unsigned long long)st.by_state[IDX_PENDING]);
			rc = 1;
			break;
		}
		usleep(100000);
	}
	fs_paths_release(&p);
	return rc;
}

int cmd_config(int argc, char *argv[])
{
	struct cmd_args a;
	struct fs_paths p;
	struct fs_config cfg;
	char saved[4096], err[256], next[4096];
	int rc;

	rc = cmd_parse("config", argc, argv, &a, NULL, NULL);
	if (!rc)
		rc = cmd_paths("config", &a, 0, &p);
	if (rc) {
		free(a.rest);
		return rc;
	}
	rc = opt_load(&p, saved, sizeof(saved));
	if (rc == -ENOENT || rc == -EPROTO) {
		saved[0] = '\0';
	} else if (rc) {
		fprintf(stderr, "hevcfs config: %s: %s\n", p.backing, strerror(-rc));
		rc = EX_NOINPUT;
		goto out;
	}
	if (!a.nrest) {
		/* one option a line */
		for (char *s = saved, *save = NULL, *kv; (kv = strtok_r(s, ",", &save)); s = NULL)
			printf("%s\n", kv);
		rc = EX_OK;
		goto out;
	}
	/* set: each checked, then the list saved with the new values last */
	fs_config_init(&cfg);
	snprintf(next, sizeof(next), "%s", saved);
	for (int i = 0; i < a.nrest; i++) {
		char key[32], rest[4096] = "";
		const char *kv = a.rest[i];
		snprintf(key, sizeof(key), "%.*s", (int)strcspn(kv, "="), kv);
		if (!opt_is_own(key) || !strcmp(key, "state") ||
		    opt_apply(&cfg, kv, err, sizeof(err))) {
			fprintf(stderr, "hevcfs config: %s\n",
				opt_is_own(key) && strcmp(key, "state") ? err
									: "not an option to save");
			rc = EX_USAGE;
			goto out;
		}
		/* drop an earlier value of the same key */
		for (char *s = next, *save = NULL, *o; (o = strtok_r(s, ",", &save)); s = NULL)
			if (strncmp(o, key, strlen(key)) || o[strlen(key)] != '=')
				snprintf(rest + strlen(rest), sizeof(rest) - strlen(rest), "%s%s",
					 rest[0] ? "," : "", o);
		if ((size_t)snprintf(next, sizeof(next), "%s%s%s", rest, rest[0] ? "," : "", kv) >=
		    sizeof(next)) {
			fprintf(stderr, "hevcfs config: too many options\n");
			rc = EX_USAGE;
			goto out;
		}
	}
	rc = opt_save(&p, next);
	if (rc) {
		fprintf(stderr, "hevcfs config: %s: %s\n", p.backing, strerror(-rc));
		rc = EX_CANTCREAT;
		goto out;
	}
	if (fs_is_mounted(&p))
		printf("saved; the running mount keeps its options until it is mounted again\n");
	rc = EX_OK;
out:
	opt_release();
	free(a.rest);
	fs_paths_release(&p);
	return rc;
}
