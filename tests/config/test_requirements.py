"""Which pip lines an environment may carry: releases from the index, nothing else unless allowed."""

from __future__ import annotations

import pytest

from config.requirements import (
    ALLOW_HINT,
    conda_pip_problems,
    pip_entry_problem,
    pip_requirements_problems,
)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        pytest.param("--index-url https://x.example/simple", "is a pip option", id="index_url_is_refused"),
        pytest.param("--index-url=https://x.example/simple", "is a pip option", id="index_url_with_equals"),
        pytest.param("-i https://x.example/simple", "is a pip option", id="short_index_url_is_refused"),
        pytest.param("--extra-index-url https://x.example", "is a pip option", id="extra_index_url"),
        pytest.param("--find-links /srv/wheels", "is a pip option", id="find_links_is_refused"),
        pytest.param("-f https://x.example/wheels", "is a pip option", id="short_find_links_is_refused"),
        pytest.param("-e ./pkg", "is a pip option", id="editable_is_refused"),
        pytest.param("--editable git+https://x.example/r.git", "is a pip option", id="long_editable"),
        pytest.param("-r other.txt", "is a pip option", id="requirements_include_is_refused"),
        pytest.param("-c constraints.txt", "is a pip option", id="constraints_include_is_refused"),
        pytest.param("--trusted-host x.example", "is a pip option", id="trusted_host_is_refused"),
        pytest.param("--pre", "is a pip option", id="any_other_option_is_refused"),
        pytest.param("  --no-deps", "is a pip option", id="indented_option_is_refused"),
        pytest.param("git+https://x.example/r.git", "is a VCS requirement", id="git_url_is_refused"),
        pytest.param("hg+https://x.example/r", "is a VCS requirement", id="mercurial_is_refused"),
        pytest.param("svn+svn://x.example/r", "is a VCS requirement", id="subversion_is_refused"),
        pytest.param("bzr+lp:project", "is a VCS requirement", id="bazaar_is_refused"),
        pytest.param("pkg @ git+https://x.example/r.git", "is a VCS requirement", id="named_vcs_is_refused"),
        pytest.param("pkg @ https://x.example/p-1.0.whl", "is a URL requirement", id="named_url_is_refused"),
        pytest.param("pkg[extra]@https://x.example/p.zip", "is a URL requirement", id="named_url_no_spaces"),
        pytest.param("pkg @ file:///srv/pkg", "is a URL requirement", id="named_file_url_is_refused"),
        pytest.param("https://x.example/pkg-1.0-py3-none-any.whl", "is a URL requirement", id="bare_url"),
        pytest.param("file:///srv/pkg", "is a URL requirement", id="bare_file_url_is_refused"),
        pytest.param("./pkg", "is a local path requirement", id="relative_path_is_refused"),
        pytest.param("../pkg", "is a local path requirement", id="parent_path_is_refused"),
        pytest.param(".", "is a local path requirement", id="current_dir_is_refused"),
        pytest.param("/abs/path", "is a local path requirement", id="absolute_path_is_refused"),
        pytest.param("~/pkg", "is a local path requirement", id="home_path_is_refused"),
        pytest.param("vendor/pkg", "is a local path requirement", id="path_with_a_slash_is_refused"),
        pytest.param("pkg-1.0-py3-none-any.whl", "is a local path requirement", id="wheel_file_is_refused"),
        pytest.param("pkg-1.0.tar.gz", "is a local path requirement", id="sdist_file_is_refused"),
        pytest.param(
            "numpy==1.26 --global-option=--x",
            "carries the pip option --global-option",
            id="per_requirement_option_is_refused",
        ),
        pytest.param("numpy", None, id="plain_name_is_allowed"),
        pytest.param("numpy==1.26.4", None, id="pinned_release_is_allowed"),
        pytest.param("numpy >= 1.2, < 2", None, id="range_with_spaces_is_allowed"),
        pytest.param("scikit-learn[alldeps]~=1.5", None, id="extras_are_allowed"),
        pytest.param('pandas>=2; python_version >= "3.10"', None, id="markers_are_allowed"),
        pytest.param("joblib  # for the model", None, id="trailing_comment_is_allowed"),
        pytest.param("numpy==1.26.4 --hash=sha256:abc", None, id="hash_pin_is_allowed"),
        pytest.param("# --index-url https://x", None, id="commented_out_option_is_allowed"),
        pytest.param("", None, id="blank_is_allowed"),
    ],
)
def test_a_pip_line_is_refused_unless_it_names_a_release_on_the_index(
    entry: str, problem: str | None
) -> None:
    assert pip_entry_problem(entry) == problem


def test_a_requirements_file_names_each_refused_line_and_how_to_allow_it() -> None:
    text = "numpy==1.26\n# a comment\n--index-url https://x.example/simple\njoblib\n-e ./pkg\n"

    problems = pip_requirements_problems(text, source="requirements.txt")

    assert problems == [
        f'requirements.txt:3: "--index-url https://x.example/simple" is a pip option; {ALLOW_HINT}',
        f'requirements.txt:5: "-e ./pkg" is a pip option; {ALLOW_HINT}',
    ]
    assert "TIDEGATE_ALLOW_PIP_OPTIONS=true" in ALLOW_HINT


def test_a_continued_line_is_named_by_its_first_line() -> None:
    text = "numpy\n--extra-index-url \\\n  https://x.example\n"

    assert pip_requirements_problems(text, source="req.txt") == [
        f'req.txt:2: "--extra-index-url   https://x.example" is a pip option; {ALLOW_HINT}'
    ]


CONDA = """\
name: model-env
channels:
  - conda-forge
dependencies:
  - python=3.11
  - scikit-learn=1.5
  - pip:
      - --index-url https://x.example/simple
      - joblib
      - "pkg @ git+https://x.example/r.git"
  - --find-links=/srv/wheels
"""


def test_a_conda_file_names_the_refused_pip_lines_with_the_file_s_line_numbers() -> None:
    assert conda_pip_problems(CONDA, source="conda.yaml") == [
        f'conda.yaml:8: "--index-url https://x.example/simple" is a pip option; {ALLOW_HINT}',
        f'conda.yaml:10: "pkg @ git+https://x.example/r.git" is a VCS requirement; {ALLOW_HINT}',
        f'conda.yaml:11: "--find-links=/srv/wheels" is a pip option; {ALLOW_HINT}',
    ]


@pytest.mark.parametrize(
    "conda",
    [
        "dependencies:\n  - numpy=1.26\n  - conda-forge::lightgbm=4.1.0\n  - pip:\n      - joblib==1.4\n",
        "dependencies: [numpy, {pip: [joblib]}]\n",
        "dependencies: {not: a list}\n",
        "name: [unclosed\n",
        "",
    ],
    ids=[
        "index_releases_and_channels_pass",
        "flow_style_passes",
        "a_malformed_file_is_left_to_its_reader",
        "invalid_yaml_is_left_to_its_reader",
        "an_empty_file_passes",
    ],
)
def test_a_conda_file_without_refused_lines_has_no_problems(conda: str) -> None:
    assert conda_pip_problems(conda, source="conda.yaml") == []


def test_flow_style_pip_lines_are_named_by_their_line() -> None:
    conda = "dependencies:\n  - numpy\n  - pip: [joblib,\n          ./local-pkg]\n"

    assert conda_pip_problems(conda, source="env.yml") == [
        f'env.yml:4: "./local-pkg" is a local path requirement; {ALLOW_HINT}'
    ]
