/* placeholder */
#include "source.h"
