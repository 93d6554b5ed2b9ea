"""The card model against the CDS Hooks 2.0 specification's own JSON examples."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mgaki.service.cds.models import Action, Card, CdsResponse, FeedbackRequest, Suggestion

# CDS Hooks 2.0, "Example response" (https://cds-hooks.hl7.org/2.0/#example), verbatim.
SPEC_RESPONSE = {
    "cards": [
        {"uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "summary": "Example Card", "indicator": "info",
         "detail": "This is an example card.",
         "source": {"label": "Static CDS Service Example", "url": "https://example.com",
                    "icon": "https://example.com/img/icon-100px.png"},
         "links": [{"label": "Google", "url": "https://google.com", "type": "absolute"},
                   {"label": "Github", "url": "https://github.com", "type": "absolute"},
                   {"label": "SMART Example App", "url": "https://smart.example.com/launch", "type": "smart",
                    "appContext": "{\"session\":3456356,\"settings\":{\"module\":4235}}"}]},
        {"summary": "Another card", "indicator": "warning", "source": {"label": "Static CDS Service Example"},
         "overrideReasons": [
             {"code": "reason-code-provided-by-service",
              "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
              "display": "Patient refused"},
             {"code": "12354", "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
              "display": "Contraindicated"}]}]}

# CDS Hooks 2.0, Action examples (create / update / delete).
SPEC_ACTIONS = [
    {"type": "create", "description": "Create a prescription for Acetaminophen 250 MG",
     "resource": {"resourceType": "MedicationRequest", "id": "medrx001", "...": "<snipped for brevity>"}},
    {"type": "update", "description": "Update the order to record the appropriateness score",
     "resource": {"resourceType": "ServiceRequest", "id": "procedure-request-1", "...": "<snipped for brevity>"}},
    {"type": "delete", "description": "Remove the inappropriate order",
     "resourceId": "ServiceRequest/procedure-request-1"},
]

# CDS Hooks 2.0, Suggestion example (a create action carrying a new resource), verbatim.
SPEC_SUGGESTION = {
    "label": "Human-readable suggestion label",
    "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
    "actions": [{"type": "create", "description": "Create a prescription for Acetaminophen 250 MG",
                 "resource": {"resourceType": "MedicationRequest", "id": "medrx001", "...": "<snipped for brevity>"}}],
}

# CDS Hooks 2.0, feedback examples.
SPEC_FEEDBACK = [
    {"feedback": [{"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
                   "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                   "outcomeTimestamp": "2021-12-11T10:05:31Z"}]},
    {"feedback": [{"card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb", "outcome": "overridden",
                   "outcomeTimestamp": "2020-12-11T00:00:00Z"}]},
    {"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
                   "overrideReason": {"reason": {"code": "d7ecf885",
                                                 "system": "https://example.com/cds-hooks/override-reason-system"},
                                      "userComment": "A comment entered by the clinician."},
                   "outcomeTimestamp": "2020-12-11T00:00:00Z"}]},
]


def test_spec_example_response_round_trips():
    resp = CdsResponse.model_validate(SPEC_RESPONSE)
    assert len(resp.cards) == 2
    assert resp.model_dump(exclude_none=True) == SPEC_RESPONSE


@pytest.mark.parametrize("action", SPEC_ACTIONS, ids=lambda a: a["type"])
def test_spec_example_actions(action):
    assert Action.model_validate(action).model_dump(exclude_none=True) == action


def test_spec_example_suggestion_with_create_in_a_card():
    assert Suggestion.model_validate(SPEC_SUGGESTION).model_dump(exclude_none=True) == SPEC_SUGGESTION
    card = {"summary": "s", "indicator": "info", "source": {"label": "l"}, "suggestions": [SPEC_SUGGESTION],
            "selectionBehavior": "at-most-one"}
    assert Card.model_validate(card).model_dump(exclude_none=True) == card


def test_create_action_needs_resource_and_delete_a_resource_id():
    with pytest.raises(ValidationError, match="needs a resource"):
        Action.model_validate({"type": "create", "description": "d", "resourceId": "MedicationRequest/x"})
    with pytest.raises(ValidationError, match="needs a resourceId"):
        Action.model_validate({"type": "delete", "description": "d"})


@pytest.mark.parametrize("fb", SPEC_FEEDBACK, ids=["accepted", "overridden", "override-reason"])
def test_spec_example_feedback(fb):
    assert FeedbackRequest.model_validate(fb).model_dump(exclude_none=True) == fb


@pytest.mark.parametrize("bad, why", [
    ({"summary": "x", "indicator": "info"}, "source"),
    ({"summary": "x" * 140, "indicator": "info", "source": {"label": "s"}}, "summary"),
    ({"summary": "x", "indicator": "hard-stop", "source": {"label": "s"}}, "indicator"),
    ({"summary": "x", "indicator": "info", "source": {"label": "s"},
      "suggestions": [{"label": "do"}]}, "selectionBehavior"),
    ({"summary": "x", "indicator": "info", "source": {"label": "s"},
      "links": [{"label": "l", "url": "https://a", "type": "absolute", "appContext": "{}"}]}, "appContext"),
    ({"summary": "x", "indicator": "info", "source": {"label": "s"}, "colour": "red"}, "colour"),
])
def test_invalid_cards_rejected(bad, why):
    with pytest.raises(ValidationError, match=why):
        Card.model_validate(bad)


def test_update_action_needs_resource():
    with pytest.raises(ValidationError, match="needs a resource"):
        Action.model_validate({"type": "update", "description": "d"})
