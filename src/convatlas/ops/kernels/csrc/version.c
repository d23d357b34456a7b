/* The digest of the sources this library was built from, so that a stale build is never used. */

#ifndef KERNELS_SOURCE_DIGEST
#define KERNELS_SOURCE_DIGEST "unknown"
#endif

const char *convatlas_kernels_digest(void) { return KERNELS_SOURCE_DIGEST; }
