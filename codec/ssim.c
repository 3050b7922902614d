/* ssim — structural similarity of two luma planes, the quality gate. */
#include "internal.h"

/* SSIM constants for 8-bit samples: (0.01*255)^2 and (0.03*255)^2. */
#define SSIM_C1 (6.5025)
#define SSIM_C2 (58.5225)
#define SSIM_WIN 8  /* window side */
#define SSIM_STEP 4 /* windows overlap by half */

double codec_ssim_plane(const uint8_t *a, int a_stride, const uint8_t *b, int b_stride, int width,
			int height)
{
	double sum = 0;
	long count = 0;

	if (width < SSIM_WIN || height < SSIM_WIN) {
		/* too small for windows: one window over everything */
		double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
		long n = (long)width * height;
		for (int y = 0; y < height; y++)
			for (int x = 0; x < width; x++) {
				double va = a[y * a_stride + x], vb = b[y * b_stride + x];
				sa += va, sb += vb, saa += va * va, sbb += vb * vb, sab += va * vb;
			}
		if (n == 0)
			return 1.0;
		double ma = sa / n, mb = sb / n;
		double va = saa / n - ma * ma, vb = sbb / n - mb * mb, cov = sab / n - ma * mb;
		return ((2 * ma * mb + SSIM_C1) * (2 * cov + SSIM_C2)) /
		       ((ma * ma + mb * mb + SSIM_C1) * (va + vb + SSIM_C2));
	}
	for (int y = 0; y + SSIM_WIN <= height; y += SSIM_STEP) {
		for (int x = 0; x + SSIM_WIN <= width; x += SSIM_STEP) {
			unsigned sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
			for (int j = 0; j < SSIM_WIN; j++) {
				const uint8_t *pa = a + (long)(y + j) * a_stride + x;
				const uint8_t *pb = b + (long)(y + j) * b_stride + x;
				for (int i = 0; i < SSIM_WIN; i++) {
					unsigned va = pa[i], vb = pb[i];
					sa += va, sb += vb;
					saa += va * va, sbb += vb * vb, sab += va * vb;
				}
			}
			const double n = SSIM_WIN * SSIM_WIN;
			double ma = sa / n, mb = sb / n;
			double var_a = saa / n - ma * ma, var_b = sbb / n - mb * mb;
			double cov = sab / n - ma * mb;
			sum += ((2 * ma * mb + SSIM_C1) * (2 * cov + SSIM_C2)) /
			       ((ma * ma + mb * mb + SSIM_C1) * (var_a + var_b + SSIM_C2));
			count++;
		}
	}
	return sum / (double)count;
}
