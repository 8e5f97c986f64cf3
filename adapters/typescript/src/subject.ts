/** Subject and pattern rules (docs/protocol.md section 5), checked before anything is sent. */
import { InvalidSubjectError } from "./errors.js";

export const RESERVED_PREFIX = "$nexus.";
const MAX_SUBJECT_BYTES = 512;

function tokens(subject: string): string[] {
  if (!subject) throw new InvalidSubjectError(subject, "empty");
  if (Buffer.byteLength(subject) > MAX_SUBJECT_BYTES) {
    throw new InvalidSubjectError(subject, `longer than ${MAX_SUBJECT_BYTES} bytes`);
  }
  if (/[\s\u0000-\u001f\u007f-\u009f]/u.test(subject)) {
    throw new InvalidSubjectError(subject, "contains whitespace or a control character");
  }
  const t = subject.split(".");
  if (t.some((x) => x === "")) throw new InvalidSubjectError(subject, "empty token");
  return t;
}

/** Throws {@link InvalidSubjectError} unless `subject` may be published to. */
export function validatePublishSubject(subject: string): void {
  const t = tokens(subject);
  if (t.some((x) => x.includes("*") || x.includes(">"))) {
    throw new InvalidSubjectError(subject, "wildcards are only allowed in subscriptions");
  }
  if (subject.startsWith(RESERVED_PREFIX)) {
    throw new InvalidSubjectError(subject, `subjects starting with ${RESERVED_PREFIX} are reserved`);
  }
}

/** Throws {@link InvalidSubjectError} unless `pattern` is a valid subscription pattern. */
export function validatePattern(pattern: string): void {
  const t = tokens(pattern);
  t.forEach((x, i) => {
    if (x === ">" && i !== t.length - 1) throw new InvalidSubjectError(pattern, "'>' is only allowed as the last token");
    if (x !== "*" && x !== ">" && (x.includes("*") || x.includes(">"))) {
      throw new InvalidSubjectError(pattern, "wildcards must be whole tokens");
    }
  });
  if (pattern.startsWith(RESERVED_PREFIX)) {
    throw new InvalidSubjectError(pattern, `patterns starting with ${RESERVED_PREFIX} are reserved`);
  }
}

/** True when `subject` matches `pattern` (`*` one token, trailing `>` the rest). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split("."), s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}
