"""The names kube-apiserver's authentication uses: the anonymous user and the groups it adds, the
keys of a user's extra, the authenticators' names, the failure codes (`Reason`) and the errors.
"""

from __future__ import annotations

from enum import Enum


# --- names the API server uses -----------------------------------------------------------------

USER_ANONYMOUS = "system:anonymous"
GROUP_UNAUTHENTICATED = "system:unauthenticated"
GROUP_AUTHENTICATED = "system:authenticated"
GROUP_SERVICE_ACCOUNTS = "system:serviceaccounts"
SERVICE_ACCOUNT_USER_PREFIX = "system:serviceaccount:"
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
NODE_UID_KEY = "authentication.kubernetes.io/node-uid"

X509 = "x509"
SERVICE_ACCOUNT = "serviceaccount"
ANONYMOUS = "anonymous"



class Reason(str, Enum):
    """Why a credential was not accepted; the value is a stable machine-readable code."""

    ANONYMOUS_DISABLED = "anonymous_disabled"
    CERT_MALFORMED = "cert_malformed"
    CERT_UNKNOWN_AUTHORITY = "cert_unknown_authority"
    CERT_EXPIRED = "cert_expired"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_INCOMPATIBLE_USAGE = "cert_incompatible_usage"
    CERT_UNHANDLED_CRITICAL_EXTENSION = "cert_unhandled_critical_extension"
    CERT_CHAIN_INVALID = "cert_chain_invalid"                  # a CA above it: not a CA, path length
    CERT_NAME_NOT_AUTHORIZED = "cert_name_not_authorized"      # a CA's name constraints exclude a SAN
    CERT_EMPTY_COMMON_NAME = "cert_empty_common_name"          # ignored, not an error
    CERT_AUTHENTICATOR_OFF = "cert_authenticator_off"          # ignored: no --client-ca-file
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_UNSUPPORTED_ALGORITHM = "token_unsupported_algorithm"
    TOKEN_WRONG_ISSUER = "token_wrong_issuer"
    TOKEN_BAD_SIGNATURE = "token_bad_signature"
    TOKEN_WRONG_AUDIENCE = "token_wrong_audience"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_ISSUED_IN_FUTURE = "token_issued_in_future"
    TOKEN_INVALID_CLAIMS = "token_invalid_claims"
    TOKEN_SERVICE_ACCOUNT_NOT_FOUND = "token_service_account_not_found"
    TOKEN_SERVICE_ACCOUNT_UID_MISMATCH = "token_service_account_uid_mismatch"
    TOKEN_INVALIDATED = "token_invalidated"                    # its bound object is not found
    TOKEN_AUTHENTICATOR_OFF = "token_authenticator_off"        # ignored: no SA keys configured


class AuthnConfigError(Exception):
    """A file named by a flag cannot be read or parsed. `missing` when it does not exist."""

    def __init__(self, path: str, message: str, *, missing: bool = False):
        super().__init__(message)
        self.path = path
        self.message = message
        self.missing = missing

    def __str__(self) -> str:
        return self.message


class MalformedTokenError(ValueError):
    """The text is not a JWS compact serialization with JSON header and claims."""
