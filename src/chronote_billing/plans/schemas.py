"""The public shapes of plans: the trial running now."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TrialView(BaseModel):
    object: str = "trial"
    plan: str
    plan_name: str
    ends_at: datetime = Field(description="When the trial ends, and its credits with it.")
    credits: int = Field(description="Whole credits the trial brought.")
    card_on_file: bool = Field(description="Whether a card will be charged when the trial ends.")
    then: str = Field(description="The plan from the trial's end: the trial's plan with a card, else free.")
