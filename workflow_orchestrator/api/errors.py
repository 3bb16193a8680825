"""The engine's errors as HTTP answers: bad input 400, a transition not allowed now 409,
the database out of reach 503."""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, DataError, IntegrityError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ..models import Workflow
from ..services import IdempotencyConflict, InvalidTransition, available_actions
from .access import rights

logger = logging.getLogger(__name__)


def api_exception_handler(exc, context):
    if isinstance(exc, InvalidTransition):
        request = context.get("request")
        allowed = available_actions(exc.workflow, **rights(request and request.user, exc.workflow))
        body = {"detail": str(exc), "state": exc.state, "available_transitions": allowed}
        return Response(body, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, IdempotencyConflict):
        body = {"detail": "This idempotency key was already used for a different request."}
        return Response(body, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, RequestDataTooBig):
        body = {"detail": f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DataError):
        # The database refused a value (the fields are checked before they get there; this
        # is the backstop): the client's error, and retrying it cannot help.
        logger.warning("the database refused a value answering %s: %s", context.get("request").path, exc)
        body = {"detail": "The request holds a value the database cannot store; nothing was changed."}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError):
        # The database is down or unreachable: say so, and let the client retry.
        logger.error("database error answering %s", context.get("request").path, exc_info=exc)
        body = {"detail": "The database is unavailable; nothing was changed. Try again shortly."}
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
    if isinstance(exc, Workflow.DoesNotExist):  # deleted between the lookup and the service's lock
        return Response({"detail": "No workflow matches the given query."}, status=status.HTTP_404_NOT_FOUND)
    return exception_handler(exc, context)
