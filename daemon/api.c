/* placeholder */
#include "api.h"
