"""Moved: the publishers are the ministry client's (`shinchoku_client.publisher`, package `shinchoku-client`).

This name stays so that code written against `shinchoku.client` keeps working; import from
`shinchoku_client` in new code.
"""

from shinchoku_client.publisher import (
    AgencyPublisher,
    PermissionDenied,
    PublishError,
    PublishTimeout,
    SecretariatPublisher,
    Sent,
)

__all__ = ["AgencyPublisher", "PermissionDenied", "PublishError", "PublishTimeout", "SecretariatPublisher", "Sent"]
