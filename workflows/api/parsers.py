from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes.

    DRF hands the request stream straight to its parser, so Django's own limit on the
    body size never applies to API requests: without this, any body size is read.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit is not None and declared > limit:
            raise ParseError(f"The request body is larger than {limit} bytes.")
        return super().parse(stream, media_type, parser_context)
