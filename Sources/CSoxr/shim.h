// libsoxr: band-limited resampling to Whisper's 16 kHz.
#include <soxr.h>
