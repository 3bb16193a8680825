from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from ..values import MAX_DEPTH, depth_exceeds

# A body holds stored values (an input, a task's params) a few levels down.
MAX_BODY_DEPTH = MAX_DEPTH + 4


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes, nested at most MAX_BODY_DEPTH
    levels deep.

    DRF hands the request stream straight to its parser, so Django's own limit on the
    body size never applies to API requests: without this, any body size is read. A
    deeply nested body is refused here, before any recursive code (validation, hashing,
    encoding) can run out of stack on it.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit is not None and declared > limit:
            raise ParseError(f"The request body is larger than {limit} bytes.")
        too_deep = f"JSON parse error - the body is nested more than {MAX_BODY_DEPTH} levels deep."
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(too_deep) from None
        if depth_exceeds(data, MAX_BODY_DEPTH):
            raise ParseError(too_deep)
        return data
