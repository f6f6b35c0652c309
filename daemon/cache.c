/* placeholder */
#include "cache.h"
