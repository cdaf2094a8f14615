package dev.edgeship.core

/**
 * A small JSON reader and writer, so this module needs nothing but the Kotlin standard library
 * (it is unit-tested on a plain JVM; the app uses the same code on Android).
 *
 * Values: Map<String, Any?> (insertion order kept), List<Any?>, String, Long (integral numbers),
 * Double (other numbers), Boolean, null.
 */
object Json {
    class ParseException(message: String) : Exception(message)

    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (!p.atEnd()) throw p.fail("trailing characters")
        return v
    }

    fun write(value: Any?, indent: Int = 2): String {
        val sb = StringBuilder()
        writeTo(sb, value, indent, 0)
        return sb.toString()
    }

    private fun writeTo(sb: StringBuilder, v: Any?, indent: Int, level: Int) {
        when (v) {
            null -> sb.append("null")
            is String -> quote(sb, v)
            is Boolean -> sb.append(if (v) "true" else "false")
            is Int, is Long, is Short, is Byte -> sb.append(v.toString())
            is Float -> number(sb, v.toDouble())
            is Double -> number(sb, v)
            is Map<*, *> -> {
                if (v.isEmpty()) { sb.append("{}"); return }
                sb.append('{')
                var first = true
                for ((k, item) in v) {
                    if (!first) sb.append(',')
                    first = false
                    newline(sb, indent, level + 1)
                    quote(sb, k.toString())
                    sb.append(if (indent > 0) ": " else ":")
                    writeTo(sb, item, indent, level + 1)
                }
                newline(sb, indent, level)
                sb.append('}')
            }
            is Iterable<*> -> {
                val items = v.toList()
                if (items.isEmpty()) { sb.append("[]"); return }
                sb.append('[')
                for ((i, item) in items.withIndex()) {
                    if (i > 0) sb.append(',')
                    newline(sb, indent, level + 1)
                    writeTo(sb, item, indent, level + 1)
                }
                newline(sb, indent, level)
                sb.append(']')
            }
            is IntArray -> writeTo(sb, v.toList(), indent, level)
            is LongArray -> writeTo(sb, v.toList(), indent, level)
            is FloatArray -> writeTo(sb, v.toList(), indent, level)
            is DoubleArray -> writeTo(sb, v.toList(), indent, level)
            else -> quote(sb, v.toString())
        }
    }

    private fun newline(sb: StringBuilder, indent: Int, level: Int) {
        if (indent <= 0) return
        sb.append('\n')
        for (i in 0 until indent * level) sb.append(' ')
    }

    private fun number(sb: StringBuilder, d: Double) {
        if (d.isNaN() || d.isInfinite()) { sb.append("null"); return }
        if (d == Math.rint(d) && Math.abs(d) < 1e15) sb.append(d.toLong().toString()).append(".0")
        else sb.append(d.toString())
    }

    private fun quote(sb: StringBuilder, s: String) {
        sb.append('"')
        for (c in s) {
            when (c) {
                '"' -> sb.append("\\\"")
                '\\' -> sb.append("\\\\")
                '\n' -> sb.append("\\n")
                '\r' -> sb.append("\\r")
                '\t' -> sb.append("\\t")
                else -> if (c < ' ') sb.append(String.format("\\u%04x", c - '\u0000')) else sb.append(c)
            }
        }
        sb.append('"')
    }

    private class Parser(val s: String) {
        var i = 0

        fun atEnd() = i >= s.length
        fun fail(what: String) = ParseException("invalid JSON at offset $i: $what")

        fun skipWs() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++
        }

        fun value(): Any? {
            if (atEnd()) throw fail("unexpected end")
            return when (s[i]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> num()
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, i)) throw fail("expected $word")
            i += word.length
            return v
        }

        fun obj(): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++
            skipWs()
            if (i < s.length && s[i] == '}') { i++; return out }
            while (true) {
                skipWs()
                if (atEnd() || s[i] != '"') throw fail("expected a key")
                val k = str()
                skipWs()
                if (atEnd() || s[i] != ':') throw fail("expected ':'")
                i++
                skipWs()
                out[k] = value()
                skipWs()
                if (atEnd()) throw fail("unexpected end in object")
                if (s[i] == ',') { i++; continue }
                if (s[i] == '}') { i++; return out }
                throw fail("expected ',' or '}'")
            }
        }

        fun arr(): List<Any?> {
            val out = ArrayList<Any?>()
            i++
            skipWs()
            if (i < s.length && s[i] == ']') { i++; return out }
            while (true) {
                skipWs()
                out.add(value())
                skipWs()
                if (atEnd()) throw fail("unexpected end in array")
                if (s[i] == ',') { i++; continue }
                if (s[i] == ']') { i++; return out }
                throw fail("expected ',' or ']'")
            }
        }

        fun str(): String {
            val sb = StringBuilder()
            i++
            while (true) {
                if (atEnd()) throw fail("unterminated string")
                val c = s[i++]
                if (c == '"') return sb.toString()
                if (c != '\\') { sb.append(c); continue }
                if (atEnd()) throw fail("bad escape")
                when (val e = s[i++]) {
                    '"', '\\', '/' -> sb.append(e)
                    'b' -> sb.append('\b')
                    'f' -> sb.append('\u000C')
                    'n' -> sb.append('\n')
                    'r' -> sb.append('\r')
                    't' -> sb.append('\t')
                    'u' -> {
                        if (i + 4 > s.length) throw fail("bad \\u escape")
                        sb.append(Integer.parseInt(s.substring(i, i + 4), 16).toChar())
                        i += 4
                    }
                    else -> throw fail("bad escape \\$e")
                }
            }
        }

        fun num(): Any {
            val start = i
            if (i < s.length && (s[i] == '-' || s[i] == '+')) i++
            var integral = true
            while (i < s.length) {
                val c = s[i]
                if (c in '0'..'9') { i++; continue }
                if (c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+') { integral = false; i++; continue }
                break
            }
            val text = s.substring(start, i)
            if (text.isEmpty() || text == "-") throw fail("unexpected character")
            try {
                if (integral) {
                    val l = text.toLongOrNull()
                    if (l != null) return l
                }
                return text.toDouble()
            } catch (e: NumberFormatException) {
                throw fail("bad number '$text'")
            }
        }
    }
}
