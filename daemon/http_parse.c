/* placeholder */
#include "http_parse.h"
