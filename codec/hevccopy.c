/*
 * hevccopy — an "encoder" for libheif that codes nothing: it hands libheif
 * the NAL units of a picture already coded (taken from another HEIC by
 * hevcdec_capture_nals), so a file can be rewritten with new metadata and
 * its pictures bit for bit. libheif 1.15 has no API to add a coded picture;
 * its encoder plugin API is the way in. Registered below x265's priority and
 * chosen by name (HEVCCOPY_ID) only, for heic_encode_coded.
 */
#include "internal.h"

#include <errno.h>
#include <libheif/heif.h>
#include <libheif/heif_plugin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Below libheif's default (100): never chosen for a format, only by name. */
#define HEVCCOPY_PRIORITY 1
/* The 4-byte length before each NAL unit of a capture. */
#define NAL_LEN 4

/* What the next encode hands out (set under copy_lock, see heic.c). */
static const struct hevcdec_nals *copy_src;

struct hevccopy {
	const uint8_t *data; /* the capture being handed out */
	size_t len, at;
	int quality, lossless, logging;
};

static const struct heif_error copy_ok = {heif_error_Ok, heif_suberror_Unspecified, "ok"};
/* (libheif's own heif_error_unsupported_parameter is not exported) */
static const struct heif_error copy_unsupported = {
    heif_error_Usage_error, heif_suberror_Unsupported_parameter, "unsupported parameter"};

static struct heif_error copy_error(const char *msg)
{
	struct heif_error e = {heif_error_Encoder_plugin_error, heif_suberror_Unspecified, msg};
	return e;
}

static const char *copy_name(void)
{
	return "hevcfs copy of coded pictures";
}

static struct heif_error copy_new(void **out)
{
	struct hevccopy *c = calloc(1, sizeof(*c));
	struct heif_error nomem = {heif_error_Memory_allocation_error, heif_suberror_Unspecified,
				   "out of memory"};

	if (!c)
		return nomem;
	*out = c;
	return copy_ok;
}

static void copy_free(void *arg)
{
	free(arg);
}

/* The standard parameters are kept and reported, and change nothing. */
static struct heif_error copy_set_quality(void *arg, int q)
{
	((struct hevccopy *)arg)->quality = q;
	return copy_ok;
}

static struct heif_error copy_get_quality(void *arg, int *q)
{
	*q = ((struct hevccopy *)arg)->quality;
	return copy_ok;
}

static struct heif_error copy_set_lossless(void *arg, int v)
{
	((struct hevccopy *)arg)->lossless = v;
	return copy_ok;
}

static struct heif_error copy_get_lossless(void *arg, int *v)
{
	*v = ((struct hevccopy *)arg)->lossless;
	return copy_ok;
}

static struct heif_error copy_set_logging(void *arg, int v)
{
	((struct hevccopy *)arg)->logging = v;
	return copy_ok;
}

static struct heif_error copy_get_logging(void *arg, int *v)
{
	*v = ((struct hevccopy *)arg)->logging;
	return copy_ok;
}

static const struct heif_encoder_parameter *copy_params[] = {NULL};

static const struct heif_encoder_parameter **copy_list(void *arg)
{
	(void)arg;
	return copy_params;
}

static struct heif_error copy_set_int(void *arg, const char *name, int v)
{
	(void)arg, (void)name, (void)v;
	return copy_unsupported;
}

static struct heif_error copy_get_int(void *arg, const char *name, int *v)
{
	(void)arg, (void)name, (void)v;
	return copy_unsupported;
}

static struct heif_error copy_set_str(void *arg, const char *name, const char *v)
{
	(void)arg, (void)name, (void)v;
	return copy_unsupported;
}

static struct heif_error copy_get_str(void *arg, const char *name, char *v, int n)
{
	(void)arg, (void)name, (void)v, (void)n;
	return copy_unsupported;
}

/* The picture is taken as it comes: no conversion before an encode that
 * does not look at it. */
static void copy_colorspace(enum heif_colorspace *cs, enum heif_chroma *ch)
{
	(void)cs, (void)ch;
}

static void copy_colorspace2(void *arg, enum heif_colorspace *cs, enum heif_chroma *ch)
{
	(void)arg, (void)cs, (void)ch;
}

static struct heif_error copy_encode(void *arg, const struct heif_image *image,
				     enum heif_image_input_class cls)
{
	struct hevccopy *c = arg;

	(void)image, (void)cls;
	if (!copy_src || !copy_src->done || !copy_src->len)
		return copy_error("no coded picture to hand over");
	c->data = copy_src->data;
	c->len = copy_src->len;
	c->at = 0;
	return copy_ok;
}

/* The next NAL unit, without its length (libheif's contract for HEVC), or
 * NULL at the end (also when the capture is malformed: libheif then finds
 * no SPS and fails the encode). */
static struct heif_error copy_get(void *arg, uint8_t **data, int *size,
				  enum heif_encoded_data_type *type)
{
	struct hevccopy *c = arg;
	uint32_t n;

	(void)type;
	*data = NULL;
	*size = 0;
	if (!c->data || c->len - c->at < NAL_LEN)
		return copy_ok;
	n = (uint32_t)c->data[c->at] << 24 | (uint32_t)c->data[c->at + 1] << 16 |
	    (uint32_t)c->data[c->at + 2] << 8 | c->data[c->at + 3];
	if (n == 0 || n > c->len - c->at - NAL_LEN || n > INT32_MAX)
		return copy_ok;
	*data = (uint8_t *)c->data + c->at + NAL_LEN;
	*size = (int)n;
	c->at += NAL_LEN + n;
	return copy_ok;
}

static const struct heif_encoder_plugin hevccopy_plugin = {
    .plugin_api_version = 3,
    .compression_format = heif_compression_HEVC,
    .id_name = HEVCCOPY_ID,
    .priority = HEVCCOPY_PRIORITY,
    .supports_lossy_compression = 1,
    .supports_lossless_compression = 1,
    .get_plugin_name = copy_name,
    .new_encoder = copy_new,
    .free_encoder = copy_free,
    .set_parameter_quality = copy_set_quality,
    .get_parameter_quality = copy_get_quality,
    .set_parameter_lossless = copy_set_lossless,
    .get_parameter_lossless = copy_get_lossless,
    .set_parameter_logging_level = copy_set_logging,
    .get_parameter_logging_level = copy_get_logging,
    .list_parameters = copy_list,
    .set_parameter_integer = copy_set_int,
    .get_parameter_integer = copy_get_int,
    .set_parameter_boolean = copy_set_int,
    .get_parameter_boolean = copy_get_int,
    .set_parameter_string = copy_set_str,
    .get_parameter_string = copy_get_str,
    .query_input_colorspace = copy_colorspace,
    .encode_image = copy_encode,
    .get_compressed_data = copy_get,
    .query_input_colorspace2 = copy_colorspace2,
    .query_encoded_size = NULL,
};

static pthread_once_t hevccopy_once = PTHREAD_ONCE_INIT;
static int hevccopy_err;

static void hevccopy_register(void)
{
	struct heif_error e = heif_register_encoder_plugin(&hevccopy_plugin);

	if (e.code) {
		log_msg(LOG_ERR, "heic: the copy encoder is not registered (%s)", e.message);
		hevccopy_err = -ENOTSUP;
	}
}

int hevccopy_init(void)
{
	pthread_once(&hevccopy_once, hevccopy_register);
	return hevccopy_err;
}

void hevccopy_source(const struct hevcdec_nals *src)
{
	copy_src = src;
}
