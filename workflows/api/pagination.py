from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination


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
        if not raw.isdecimal() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)
