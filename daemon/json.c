/* placeholder */
#include "json.h"
