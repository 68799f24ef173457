// libsndfile: decodes WAV (PCM 16/24/32, float), FLAC, Ogg and the other formats it reads, from memory
// through sf_open_virtual.
#include <sndfile.h>
