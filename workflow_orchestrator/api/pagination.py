from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


def whole_number(text: str, low: int, high: int) -> int | None:
    """`text` (ASCII digits only) as a number from `low` to `high`, else None. Leading zeros
    aside, it is converted only when no longer than `high`: Python refuses to convert more
    than 4,300 digits, and nothing longer could be in range anyway."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    number = int(digits)
    return number if low <= number <= high else None


class WorkflowPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        """?page_size= from 1 to max_page_size; anything else is a 400 (DRF would fall back
        to the default, or clamp, without saying so)."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = whole_number(raw, 1, self.max_page_size)
        if size is None:
            raise ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return size
