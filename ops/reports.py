"""JUnit XML reports: one file per stack and stage, `<reports>/<stage>-<stack>.xml`, so stages run as separate
CI steps or jobs never overwrite each other's report. The test stage has one testcase per (router, target) pair,
so a CI test report names the pair that failed."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass
class Case:
    """One JUnit testcase."""

    classname: str
    name: str
    outcome: Outcome
    message: str = ""
    detail: str = ""
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """Text an XML 1.0 document can hold: terminal colour codes and other control characters removed."""
    return NOT_XML.sub("", ANSI_ESCAPE.sub("", text))


def file_name(stage: str, stack: str) -> str:
    """`deploy-dev.xml`; a qualified stack name (org/project/stack) keeps only safe characters."""
    return f"{stage}-{re.sub(r'[^A-Za-z0-9_.-]', '_', stack)}.xml"


def suite_element(stage: str, stack: str, cases: list[Case]) -> ET.Element:
    counts = {outcome: sum(1 for c in cases if c.outcome == outcome) for outcome in Outcome}
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"{stage} {stack}",
        tests=str(len(cases)),
        failures=str(counts[Outcome.FAILED]),
        errors=str(counts[Outcome.ERROR]),
        skipped=str(counts[Outcome.SKIPPED]),
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    for case in cases:
        element = ET.SubElement(suite, "testcase", classname=case.classname, name=case.name, time=f"{case.seconds:.3f}")
        if case.outcome is not Outcome.PASSED:
            tag = {Outcome.FAILED: "failure", Outcome.ERROR: "error", Outcome.SKIPPED: "skipped"}[case.outcome]
            child = ET.SubElement(element, tag, message=xml_text(case.message))
            if case.detail:
                child.text = xml_text(case.detail)
        if case.output:
            ET.SubElement(element, "system-out").text = xml_text("\n".join(case.output) + "\n")
    return suites


def write_report(directory: Path, stage: str, stack: str, cases: list[Case]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(stage, stack)
    tree = ET.ElementTree(suite_element(stage, stack, cases))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path
