"""Query functions of the clinical side: worklist, studies, images, findings, vital signs, reviews,
alerts, and the accounts behind them (users, API tokens, browser sessions, audit log).

The JSON API and the web app both call these, so that the two show the same data. As in
:mod:`covidet.store.queries`, every function takes a :class:`~sqlalchemy.orm.Session` and never
commits: the caller owns the transaction (:meth:`covidet.store.db.Database.session`). Functions that
return ORM objects expect the caller to read them inside that session.

Refusals are :class:`QueryError` subclasses whose message is one sentence for the user:
:class:`NotFound` (the API answers 404), :class:`Forbidden` (403), :class:`Conflict` (409) and
:class:`Invalid` (422). Passwords are hashed by the caller (``covidet.api.auth``); this module only
stores hashes. Tokens and session ids are stored as SHA-256 hex digests only.

This module is the public face: the code lives in one module per resource, and every name is
re-exported here, so ``from covidet.store import review_queries as rq`` gives all of them.

* :mod:`covidet.store.query_common`: the refusals, ``sha256_hex``, paging and substring matching;
* :mod:`covidet.store.worklist_queries`: the worklist and vital signs;
* :mod:`covidet.store.study_queries`: studies, images, inferences, findings, triage;
* :mod:`covidet.store.review_store`: reviews (draft, update, sign) and their findings;
* :mod:`covidet.store.export_queries`: the training export of signed reviews;
* :mod:`covidet.store.alert_queries`: vital-sign alerts;
* :mod:`covidet.store.account_queries`: users, API tokens, browser sessions;
* :mod:`covidet.store.audit_queries`: the audit log.
"""

from __future__ import annotations

from covidet.store.account_queries import (
    USERNAME_PATTERN,
    authenticate_api_token,
    count_active_admins,
    create_api_token,
    create_user,
    create_web_session,
    delete_web_session,
    get_api_token,
    get_user,
    list_api_tokens,
    list_users,
    rehash_password,
    revoke_api_token,
    touch_api_token,
    update_user,
    user_by_username,
    web_session_lookup,
)
from covidet.store.alert_queries import acknowledge_alert, get_alert, list_alerts
from covidet.store.audit_queries import add_audit_event, list_audit_events
from covidet.store.export_queries import ExportBox, ExportRow, training_export_rows
from covidet.store.query_common import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    QueryError,
    sha256_hex,
)

# Private helpers that covidet.store.reading_room reaches through this module (rq._page, ...).
from covidet.store.query_common import _contains as _contains
from covidet.store.query_common import _page as _page
from covidet.store.review_store import (
    FindingAction,
    create_review,
    get_review,
    list_reviews,
    sign_review,
    update_review,
)
from covidet.store.study_queries import (
    StudyRow,
    get_image,
    get_study,
    image_findings,
    image_inferences,
    image_reviews,
    latest_inference,
    latest_triage,
    list_studies,
)
from covidet.store.worklist_queries import (
    PRIORITY_ORDER,
    VITAL_PARAMETERS,
    AiSummary,
    ReviewState,
    VitalValue,
    WorklistRow,
    get_patient,
    latest_vitals,
    patient_vitals,
    worklist,
)
from covidet.store.worklist_queries import _ai_summaries as _ai_summaries
from covidet.store.worklist_queries import _latest_reasons as _latest_reasons

__all__ = [
    "PRIORITY_ORDER",
    "USERNAME_PATTERN",
    "VITAL_PARAMETERS",
    "AiSummary",
    "Conflict",
    "ExportBox",
    "ExportRow",
    "FindingAction",
    "Forbidden",
    "Invalid",
    "NotFound",
    "QueryError",
    "ReviewState",
    "StudyRow",
    "VitalValue",
    "WorklistRow",
    "acknowledge_alert",
    "add_audit_event",
    "authenticate_api_token",
    "count_active_admins",
    "create_api_token",
    "create_review",
    "create_user",
    "create_web_session",
    "delete_web_session",
    "get_alert",
    "get_api_token",
    "get_image",
    "get_patient",
    "get_review",
    "get_study",
    "get_user",
    "image_findings",
    "image_inferences",
    "image_reviews",
    "latest_inference",
    "latest_triage",
    "latest_vitals",
    "list_alerts",
    "list_api_tokens",
    "list_audit_events",
    "list_reviews",
    "list_studies",
    "list_users",
    "patient_vitals",
    "rehash_password",
    "revoke_api_token",
    "sha256_hex",
    "sign_review",
    "touch_api_token",
    "training_export_rows",
    "update_review",
    "update_user",
    "user_by_username",
    "web_session_lookup",
    "worklist",
]
