"""English date formats with seconds: in the admin, two events of one workflow are often
seconds apart, and Django's own English formats stop at the minute ("3:04 p.m.")."""

DATETIME_FORMAT = "N j, Y, H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
