/*
 * Private to tools/: what the commands of the hevcfs program share —
 * hevcfs's own options, the arguments every command takes, progress lines.
 * Argument parsing and reporting only: the work is fs/'s.
 */
#ifndef HEVCFS_TOOLS_H
#define HEVCFS_TOOLS_H

#include <stdint.h>
#include <stdio.h>

#include "../fs/fs.h"
#include "../index/index.h"
#include "../lib/lib.h"

extern const char usage_text[];

/* ---- options.c: hevcfs's own -o options --------------------------------- */

/* Is key one of hevcfs's own options (not FUSE's)? */
int opt_is_own(const char *key);
/* Apply "key=value" to cfg (strings are copied and owned by the options
 * module for the life of the process). 0, or -EINVAL with err saying why. */
int opt_apply(struct fs_config *cfg, const char *kv, char *err, size_t len);
/* The options saved in p's index ("k=v,k=v", at most size bytes with the
 * terminator). 0, -ENOENT when none are saved, -errno. */
int opt_load(const struct fs_paths *p, char *buf, size_t size);
/* Save opts ("k=v,k=v": hevcfs's own, state= left out) in p's index. */
int opt_save(const struct fs_paths *p, const char *opts);
/* Free what the options kept (at exit). */
void opt_release(void);
/* Does the comma-separated list opts set key? */
int opt_has(const char *opts, const char *key);

/* ---- common arguments --------------------------------------------------- */

/* What every command but the mount takes: BACKING, the state directory
 * (--state DIR, --state=DIR or -o state=DIR), and its own flags, which the
 * command's flag function recognises (returning the number of arguments it
 * took, 0 when the argument is not one of its own, -1 on a bad value). */
struct cmd_args {
	const char *backing;
	const char *state;
	const char **rest; /* positional arguments after BACKING */
	int nrest;
};
int cmd_parse(const char *cmd, int argc, char *argv[], struct cmd_args *a,
	      int (*flag)(void *arg, int argc, char *argv[]), void *arg);
/* Resolve a's paths (create: make them, as a mount does), saying what is
 * wrong on stderr. 0, or the sysexits code to return. */
int cmd_paths(const char *cmd, const struct cmd_args *a, int create, struct fs_paths *p);

/* ---- progress.c: progress on a terminal, or plain lines ----------------- */

/* Is stdout a terminal (progress bars redrawn in place)? */
int progress_tty(void);
/* A bar of width cells for fraction (0..1) into buf (width + 3 bytes). */
void progress_bar(char *buf, int width, double fraction);
/* "1.2 GB" style size into buf. */
const char *human_bytes(uint64_t n, char *buf, size_t size);
/* "1 h 02 min" style duration into buf. */
const char *human_time(double seconds, char *buf, size_t size);
/* Show a progress line: redrawn in place on a terminal (at most 10 times a
 * second unless force), a plain line every few seconds otherwise. */
void progress_line(int force, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* End a progress line on a terminal (a newline when one is shown). */
void progress_done(void);

/* Print s as a JSON string. */
void json_str(FILE *f, const char *s);

/* ---- the commands -------------------------------------------------------- */
int cmd_status(int argc, char *argv[]);
int cmd_wait(int argc, char *argv[]);
int cmd_config(int argc, char *argv[]);
int cmd_verify(int argc, char *argv[]);
int cmd_import(int argc, char *argv[]);
int cmd_export(int argc, char *argv[]);

#endif
