// OpenBLAS's CBLAS interface. pkg-config `openblas` puts Debian's openblas-pthread include directory first.
#include <cblas.h>
