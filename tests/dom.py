"""Pages as trees of elements, for tests that check what a page shows (a button in a form,
a link's target, a cell's text), not how its HTML happens to be spelled.

    page = dom.parse(response)
    form = page.one("form#cancel-form")
    assert form.one("input[name=reason]")
    assert [td.text for td in page.select("tr.transition td:first-child")] == ["1", "2"]

Selectors are a small part of CSS: tag names, `#id`, `.class`, `[attr]`, `[attr=value]`
(also `~=`, `^=`, `$=` and `*=`), the descendant and child (`>`) combinators, `:first-child`,
and groups separated by commas. Text is the element's text with whitespace collapsed.
Built on the standard library's html.parser; entities are decoded in text and attributes.
"""

import re
from html.parser import HTMLParser

# Elements that never have content (and so no end tag).
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Elements inside a line of text: the others (a cell, a paragraph, a <br>) separate words.
INLINE = {"a", "abbr", "b", "code", "em", "i", "kbd", "mark", "q", "s", "small", "span", "strong", "sub", "sup", "time"}


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Element | None"):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element | str] = []

    # --- What it is ---------------------------------------------------------------------

    def get(self, name: str, default=None):
        return self.attrs.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self.attrs[name]

    def __contains__(self, name: str) -> bool:
        return name in self.attrs

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        """Its text and its descendants', whitespace collapsed."""
        parts = []

        def walk(element):
            for child in element.children:
                if isinstance(child, str):
                    parts.append(child)
                elif child.tag in INLINE:
                    walk(child)
                else:
                    parts.append(" ")
                    walk(child)
                    parts.append(" ")

        walk(self)
        return " ".join("".join(parts).split())

    def __repr__(self) -> str:
        attrs = "".join(f' {name}="{value}"' for name, value in self.attrs.items())
        text = self.text
        return f"<{self.tag}{attrs}>{text[:80]}{'…' if len(text) > 80 else ''}"

    # --- Finding elements in it ------------------------------------------------------------

    def iter(self):
        """Its descendants, in document order."""
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def select(self, selector: str, *, text: str | None = None, contains: str | None = None) -> list["Element"]:
        """The descendants matching `selector`, in document order; with `text`, only those
        whose text is exactly that; with `contains`, only those whose text contains it."""
        groups = [_compile(group) for group in _GROUP.findall(selector)]
        found = [element for element in self.iter() if any(_matches(element, steps) for steps in groups)]
        if text is not None:
            found = [element for element in found if element.text == text]
        if contains is not None:
            found = [element for element in found if contains in element.text]
        return found

    def one(self, selector: str, **kwargs) -> "Element":
        """The only descendant matching (see `select`); AssertionError when there are none or several."""
        found = self.select(selector, **kwargs)
        if len(found) != 1:
            what = f"{selector!r}" + "".join(f" {name}={value!r}" for name, value in kwargs.items())
            raise AssertionError(f"{len(found)} elements match {what}, not 1: {found[:5]}")
        return found[0]

    def texts(self, selector: str) -> list[str]:
        return [element.text for element in self.select(selector)]


# --- Selectors ---------------------------------------------------------------------------

_STEP = re.compile(r"\s*(>)?\s*([\w*-]+)?((?:#[\w-]+|\.[\w-]+|\[[^\]]+\]|:first-child)*)")
_PART = re.compile(
    r"#([\w-]+)|\.([\w-]+)|\[\s*([\w:-]+)\s*(?:([~^$*]?=)\s*(\"[^\"]*\"|'[^']*'|[^\]\s]*))?\s*\]|(:first-child)"
)


# A selector group: up to a comma outside brackets.
_GROUP = re.compile(r"(?:\[[^\]]*\]|[^,\[])+")


def _compile(selector: str) -> list[tuple]:
    """A selector group as a list of steps (combinator, tag, tests), the last one first."""
    steps, position, selector = [], 0, selector.strip()
    while position < len(selector):
        match = _STEP.match(selector, position)
        if not match or match.end() == position:
            raise ValueError(f"cannot read the selector {selector!r} at {selector[position:]!r}")
        combinator, tag, rest = match.groups()
        tests = []
        for part in _PART.finditer(rest):
            element_id, cls, name, operator, value, first_child = part.groups()
            if element_id:
                tests.append(("=", "id", element_id))
            elif cls:
                tests.append(("~=", "class", cls))
            elif first_child:
                tests.append((":first-child", None, None))
            else:
                value = value[1:-1] if value and value[0] in "\"'" else value
                tests.append((operator, name, value))
        steps.append((combinator or " ", None if tag in (None, "*") else tag.lower(), tests))
        position = match.end()
    if not steps:
        raise ValueError("an empty selector")
    return steps[::-1]


def _test(element: Element, operator, name, value) -> bool:
    if operator == ":first-child":
        siblings = [child for child in element.parent.children if isinstance(child, Element)]
        return siblings[0] is element
    if name not in element.attrs:
        return False
    actual = element.attrs[name]
    return {
        None: lambda: True,
        "=": lambda: actual == value,
        "~=": lambda: value in actual.split(),
        "^=": lambda: actual.startswith(value),
        "$=": lambda: actual.endswith(value),
        "*=": lambda: value in actual,
    }[operator]()


def _matches_step(element: Element, step) -> bool:
    _combinator, tag, tests = step
    return (tag is None or element.tag == tag) and all(_test(element, *test) for test in tests)


def _matches(element: Element, steps: list[tuple]) -> bool:
    if not _matches_step(element, steps[0]):
        return False
    if len(steps) == 1:
        return True
    combinator = steps[0][0]
    ancestor = element.parent
    while ancestor is not None and ancestor.parent is not None:  # the document itself matches nothing
        if _matches(ancestor, steps[1:]):
            return True
        if combinator == ">":
            return False
        ancestor = ancestor.parent
    return False


# --- Parsing -----------------------------------------------------------------------------


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):  # <rect/>, <br/>: no content
        self.current.children.append(Element(tag, {name: value or "" for name, value in attrs}, self.current))

    def handle_endtag(self, tag):
        # Close up to the nearest open element of that name; a stray end tag closes nothing.
        open_element = self.current
        while open_element is not self.root and open_element.tag != tag:
            open_element = open_element.parent
        if open_element is not self.root:
            self.current = open_element.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(page) -> Element:
    """The document of `page`: a response (its content), bytes or a string."""
    source = getattr(page, "content", page)
    if isinstance(source, bytes):
        source = source.decode()
    builder = _Builder()
    builder.feed(source)
    builder.close()
    return builder.root
